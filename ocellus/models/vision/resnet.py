"""A small ResNet feature extractor: a convolutional vision encoder for Flamingo-style models.

He et al. 2016, "Deep Residual Learning for Image Recognition": basic blocks
(3x3 conv -> norm -> ReLU -> 3x3 conv -> norm, plus the identity or a 1x1 projection shortcut,
then ReLU), stages of configurable widths, each stage after the first halving the resolution.
Flamingo (Alayrac et al. 2022) used a convolutional backbone too, an NFNet-F6 (Brock et al. 2021),
whose final feature map is flattened into the sequence the Perceiver Resampler reads; this is
the same interface at a size a CPU trains in minutes.

Two choices that differ from torchvision's resnet18:
  - GroupNorm (Wu & He 2018) instead of BatchNorm: a frozen encoder in a VLM stays in train() mode
    inside the trainer, where BatchNorm would keep updating its running statistics; GroupNorm has
    none and does not depend on the batch (NFNet avoids batch statistics for similar reasons).
  - after the last stage, the feature map [N, C, h, w] is flattened to h*w tokens, projected to
    hidden_size and given a learned position embedding per location: convolutions are
    translation-equivariant and the resampler downstream is permutation-invariant, so without it
    the model could not say *where* something is (tests/unit/test_resnet.py shows both).

pixel_values [N, 3, S, S] -> features [N, (S / stride)^2, hidden_size], stride = stem_stride * 2^(stages-1).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_ints

MODEL_TYPE = "ocellus_resnet"


@dataclass(frozen=True)
class ResNetConfig:
    image_size: int = 48
    num_channels: int = 3
    stem_width: int = 32
    stem_stride: int = 2
    widths: tuple[int, ...] = (32, 64, 128)   # channels per stage
    depths: tuple[int, ...] = (1, 1, 1)       # basic blocks per stage
    hidden_size: int = 128                    # width of the output tokens
    norm_groups: int = 8
    norm_eps: float = 1e-5
    hf: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        positive_ints(self, ("image_size", "num_channels", "stem_width", "stem_stride", "hidden_size", "norm_groups"),
                      "resnet config field {!r}")
        if not self.widths or len(self.widths) != len(self.depths):
            raise ConfigError(f"resnet config: widths {list(self.widths)} and depths {list(self.depths)} must be "
                              f"non-empty and of equal length (one entry per stage)")
        if any(not isinstance(v, int) or v <= 0 for v in (*self.widths, *self.depths)):
            raise ConfigError(f"resnet config: widths {list(self.widths)} and depths {list(self.depths)} must be "
                              f"positive ints")
        bad = [w for w in (self.stem_width, *self.widths) if w % self.norm_groups]
        if bad:
            raise ConfigError(f"resnet config: channel counts {bad} are not divisible by norm_groups="
                              f"{self.norm_groups} (GroupNorm)")
        if self.image_size % self.stride:
            raise ConfigError(f"resnet config: image_size={self.image_size} is not divisible by the total stride "
                              f"{self.stride} (stem_stride {self.stem_stride} x 2^{len(self.widths) - 1})")

    @property
    def stride(self) -> int:
        return self.stem_stride * 2 ** (len(self.widths) - 1)

    @property
    def grid(self) -> int:
        """Feature-map locations per side at image_size."""
        return self.image_size // self.stride

    @classmethod
    def from_hf(cls, cfg: dict) -> "ResNetConfig":
        if cfg.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"not a ResNet vision config: model_type {cfg.get('model_type')!r}, expected {MODEL_TYPE!r}")
        known = set(cls.__dataclass_fields__) - {"hf"}
        kw = {k: cfg[k] for k in known if k in cfg}
        for k in ("widths", "depths"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw, hf=dict(cfg))

    def to_hf(self) -> dict:
        out = dict(self.hf)
        out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if k != "hf"})
        out["model_type"] = MODEL_TYPE
        return out


def _norm(cfg: ResNetConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps)


class BasicBlock(nn.Module):
    def __init__(self, cfg: ResNetConfig, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(cfg, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(cfg, c_out)
        self.shortcut = None  # identity unless the shape changes
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(cfg, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNetEncoder(nn.Module):
    """pixel_values [N, C, S, S] -> [N, grid^2, hidden_size] (row-major locations)."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.config = cfg
        self.stem = nn.Sequential(nn.Conv2d(cfg.num_channels, cfg.stem_width, 3, stride=cfg.stem_stride, padding=1,
                                            bias=False), _norm(cfg, cfg.stem_width), nn.ReLU())
        stages, c_in = [], cfg.stem_width
        for s, (width, depth) in enumerate(zip(cfg.widths, cfg.depths)):
            blocks = [BasicBlock(cfg, c_in if b == 0 else width, width, 2 if (s > 0 and b == 0) else 1)
                      for b in range(depth)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(c_in, cfg.hidden_size)
        self.position_embedding = nn.Parameter(torch.empty(cfg.grid * cfg.grid, cfg.hidden_size))
        nn.init.normal_(self.position_embedding, std=0.02)

    def num_tokens(self) -> int:
        return self.config.grid * self.config.grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self._check_pixels(pixel_values)
        fmap = self.stages(self.stem(pixel_values))                                # [N, C, h, w]
        tokens = fmap.flatten(2).transpose(1, 2)                                   # [N, h*w, C]
        return self.proj(tokens) + self.position_embedding.to(tokens.dtype)        # [N, h*w, D]

    def _check_pixels(self, pixel_values) -> None:
        cfg = self.config
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 \
                or not pixel_values.is_floating_point():
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise InputError(f"pixel_values must be a float tensor [N, {cfg.num_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}], got {shape}")
        _, C, H, W = pixel_values.shape
        if (C, H, W) != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise InputError(f"pixel_values has shape {tuple(pixel_values.shape)}; this ResNet takes "
                             f"[N, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}] (its position "
                             f"embedding has one row per location of a {cfg.grid}x{cfg.grid} feature map)")
