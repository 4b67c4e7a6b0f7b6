"""Perceiver Resampler (Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot
Learning", section 2.1 and Fig. 5; after Jaegle et al. 2021, "Perceiver").

Matches open_flamingo's `PerceiverResampler` (open_flamingo/src/helpers.py, itself after
lucidrains' flamingo-pytorch): a fixed set of L learned latent vectors cross-attends to the
vision features of one image (or one video: all its frames' features, flattened) and comes out
as L visual tokens, however many features went in. Per layer:

    latents = latents + Attn(q = LN(latents), kv = [LN(media) ; LN(latents)])
    latents = latents + FFN(latents)                (FFN = LN -> Linear -> GELU -> Linear, no biases)
    out     = LN(latents)

Keys/values are the media features *concatenated with the latents* (the paper: "the keys and values
... are the concatenation of the visual features and the learned latents"), so latents can also
exchange information among themselves. For video, a learned time embedding per frame is added to
that frame's features before flattening: the only place position enters (no spatial position
embedding: a permutation of one frame's features gives the same output, a property tested in
tests/unit/test_perceiver.py). `max_num_patches` (not the paper's; None by default) adds a learned
embedding per patch position as well, as Qwen-VL's resampler adds 2D positions to its keys: the paper's
NFNet features are convolutional, a small ViT's patch tokens may not say where they are.

Shapes: images [N, P, D] or videos [N, F, P, D] -> [N, L, D]. Parameter names follow open_flamingo
(latents, frame_embs, norm_media, norm_latents, to_q, to_kv, to_out) except the feed-forward, whose
nn.Sequential indices become names (ff.norm, ff.mlp.fc1, ff.mlp.fc2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError, positive_int, positive_ints
from ocellus.nn.attention import attend
from ocellus.nn.mlp import GeluMLP
from ocellus.nn.norms import LayerNorm


@dataclass(frozen=True)
class PerceiverConfig:
    dim: int                          # width of the media features (and of the latents)
    depth: int = 6
    num_latents: int = 64             # visual tokens per image / video
    heads: int = 8
    head_dim: int = 64
    ff_mult: int = 4
    max_num_frames: int | None = None  # None: images only; else learned time embeddings for up to this many frames
    layer_norm_eps: float = 1e-5
    max_num_patches: int | None = None  # None: the paper's (no spatial position); else a learned embedding per patch

    def __post_init__(self):
        positive_ints(self, ("dim", "depth", "num_latents", "heads", "head_dim", "ff_mult"), "perceiver config field {!r}")
        positive_int(self.max_num_frames, "perceiver max_num_frames (or None)", optional=True)
        positive_int(self.max_num_patches, "perceiver max_num_patches (or None)", optional=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PerceiverConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"perceiver config: unknown fields {sorted(unknown)}; known: "
                              f"{sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class FeedForward(nn.Module):
    """Flamingo's pre-norm feed-forward: LN -> Linear(D, mult*D) -> GELU -> Linear(mult*D, D), no biases."""

    def __init__(self, dim: int, mult: int = 4, eps: float = 1e-5):
        super().__init__()
        self.norm = LayerNorm(dim, eps=eps)
        self.mlp = GeluMLP(dim, dim * mult, bias=False, act="gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class PerceiverAttention(nn.Module):
    """Latents (queries) attend to [media ; latents] (keys/values); each input has its own LayerNorm."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm_media = LayerNorm(dim, eps=eps)
        self.norm_latents = LayerNorm(dim, eps=eps)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media [N, M, D], latents [N, L, D] -> [N, L, D] (the update, before the residual)."""
        N, L, _ = latents.shape
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = self.to_q(latents).view(N, L, self.heads, self.head_dim).transpose(1, 2)           # [N, H, L, Dh]
        kv_in = torch.cat([media, latents], dim=1)                                             # [N, M+L, D]
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)                                              # 2 x [N, M+L, H*Dh]
        k = k.view(N, -1, self.heads, self.head_dim).transpose(1, 2)                           # [N, H, M+L, Dh]
        v = v.view(N, -1, self.heads, self.head_dim).transpose(1, 2)                           # [N, H, M+L, Dh]
        out = attend(q, k, v, None, is_causal=False)                                           # [N, H, L, Dh]
        return self.to_out(out.transpose(1, 2).reshape(N, L, self.heads * self.head_dim))      # [N, L, D]


class PerceiverLayer(nn.Module):
    def __init__(self, cfg: PerceiverConfig):
        super().__init__()
        self.attn = PerceiverAttention(cfg.dim, cfg.heads, cfg.head_dim, cfg.layer_norm_eps)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult, cfg.layer_norm_eps)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(media, latents)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """[N, P, D] image features or [N, F, P, D] video features -> [N, num_latents, D]."""

    def __init__(self, cfg: PerceiverConfig):
        super().__init__()
        self.config = cfg
        self.latents = nn.Parameter(torch.empty(cfg.num_latents, cfg.dim))
        self.frame_embs = nn.Parameter(torch.empty(cfg.max_num_frames, cfg.dim)) if cfg.max_num_frames else None
        self.patch_embs = nn.Parameter(torch.empty(cfg.max_num_patches, cfg.dim)) if cfg.max_num_patches else None
        self.layers = nn.ModuleList(PerceiverLayer(cfg) for _ in range(cfg.depth))
        self.norm = LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        # open_flamingo draws latents and time embeddings from N(0, 1) (torch.randn); nn.init is looked
        # up at call time so checkpoint loading (hub/checkpoint.py) can skip it
        nn.init.normal_(self.latents)
        if self.frame_embs is not None:
            nn.init.normal_(self.frame_embs)
        if self.patch_embs is not None:   # small, as a ViT's position table: the features stay what they say
            nn.init.normal_(self.patch_embs, std=0.02)

    @property
    def num_latents(self) -> int:
        return self.config.num_latents

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D = self.config.dim
        if x.dim() not in (3, 4) or x.shape[-1] != D:
            raise InputError(f"perceiver input must be image features [N, P, {D}] or video features "
                             f"[N, frames, P, {D}], got {tuple(x.shape)}")
        if self.patch_embs is not None:
            P = x.shape[-2]
            if P > self.patch_embs.shape[0]:
                raise InputError(f"{P} patches per frame exceed the perceiver's max_num_patches={self.patch_embs.shape[0]}")
            x = x + self.patch_embs[:P].to(x.dtype)                                           # [.., P, D]
        if x.dim() == 4:
            F = x.shape[1]
            if self.frame_embs is None:
                raise InputError(f"perceiver got video features {tuple(x.shape)} ({F} frames) but was built for "
                                 f"images (max_num_frames=None)")
            if F > self.frame_embs.shape[0]:
                raise InputError(f"video of {F} frames exceeds the perceiver's max_num_frames={self.frame_embs.shape[0]}")
            x = x + self.frame_embs[:F, None].to(x.dtype)                                     # [N, F, P, D]
            x = x.flatten(1, 2)                                                                # [N, F*P, D]
        latents = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)                          # [N, L, D]
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm(latents)                                                              # [N, L, D]
