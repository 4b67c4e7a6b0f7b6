"""MoCo v2: momentum contrast for unsupervised visual representation learning.

He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning" (Algorithm 1),
with v2's MLP head and augmentations (Chen et al. 2020, "Improved Baselines with Momentum
Contrastive Learning"); reference: facebookresearch/moco, moco/builder.py. Two views of each image;
the query encoder embeds one, a momentum copy of it embeds the other (the key, no gradient); the
loss is InfoNCE of each query against its key (positive) and a FIFO queue of K past keys
(negatives), at temperature T:

    q = normalize(head_q(f_q(x_q)))                [N, C]
    k = normalize(head_k(f_k(x_k))), no grad       [N, C]   after theta_k <- m theta_k + (1 - m) theta_q
    logits = [q.k, q @ queue] / T                  [N, 1 + K], label 0
    enqueue k (all processes' keys), dequeue the oldest N

The query encoder is any image encoder passed in (here the ViT of ocellus/models/vision/vit.py;
its pooled output feeds the head). Evaluation (linear probe) uses the backbone's pooled features,
not the head's, as the paper does. Shuffle-BN is not implemented: our ViT has no BatchNorm, which
is what it guards against (information leaking through batch statistics).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.models.contrastive.losses import gather_no_grad
from ocellus.models.contrastive.momentum import fifo_write, momentum_copy, momentum_update


@dataclass(frozen=True)
class MoCoConfig:
    dim: int = 128            # C: the contrastive embedding size
    queue_size: int = 65536   # K negatives; must be a multiple of the (global) batch
    momentum: float = 0.999   # m
    temperature: float = 0.2  # T (v2; v1 used 0.07)
    mlp: bool = True          # v2's 2-layer MLP head; False: v1's linear head

    def __post_init__(self):
        positive_ints(self, ("dim", "queue_size"), "MoCo {}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"MoCo momentum must be in [0, 1), got {self.momentum}")
        if self.temperature <= 0:
            raise ConfigError(f"MoCo temperature must be positive, got {self.temperature}")


@dataclass
class MoCoOutput:
    loss: torch.Tensor
    logits: torch.Tensor      # [N, 1 + K], column 0 the positive
    q: torch.Tensor           # [N, C]
    k: torch.Tensor           # [N, C]


def pooled(encoder: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """An encoder's image vector [N, D]: its pooler_output (ViT: CLS / MAP head), else the mean token."""
    out = encoder(pixel_values)
    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    return out.last_hidden_state.mean(dim=1)


class Embedder(nn.Module):
    """backbone -> pooled vector -> projection head (MoCo's encoder f with its fc layer)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: MoCoConfig):
        super().__init__()
        self.backbone = backbone
        self.head = (nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, cfg.dim))
                     if cfg.mlp else nn.Linear(feature_dim, cfg.dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(pooled(self.backbone, pixel_values)), dim=1)   # [N, C]


class MoCo(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: MoCoConfig = MoCoConfig()):
        super().__init__()
        self.config = cfg
        self.encoder_q = Embedder(backbone, feature_dim, cfg)
        self.encoder_k = momentum_copy(self.encoder_q)       # starts equal to the query encoder, moves by momentum
        self.register_buffer("queue", F.normalize(torch.randn(cfg.dim, cfg.queue_size), dim=0))  # [C, K]
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def parts(self) -> dict[str, nn.Module]:
        """Only the query encoder trains; the key encoder follows it by momentum."""
        return {"vision": self.encoder_q}

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q (Eq. 2)."""
        momentum_update([(self.encoder_q, self.encoder_k)], self.config.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest len(keys) queue entries with `keys` [N, C] (FIFO via a moving pointer)."""
        fifo_write((self.queue,), (keys,), self.queue_ptr)

    def forward(self, pixel_values: torch.Tensor, pixel_values_k: torch.Tensor) -> MoCoOutput:
        """Two views [N, 3, H, W] of the same N images -> InfoNCE loss. In training mode this also
        moves the key encoder and the queue; in eval mode nothing changes."""
        if pixel_values.shape != pixel_values_k.shape:
            raise InputError(f"MoCo's two views must have equal shapes: {tuple(pixel_values.shape)} vs "
                             f"{tuple(pixel_values_k.shape)}")
        q = self.encoder_q(pixel_values)                                          # [N, C]
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            k = self.encoder_k(pixel_values_k)                                    # [N, C], no graph
        l_pos = (q * k).sum(dim=1, keepdim=True)                                  # [N, 1]
        l_neg = q @ self.queue.clone()                                            # [N, K]
        logits = torch.cat([l_pos, l_neg], dim=1) / self.config.temperature       # [N, 1 + K]
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)       # the positive is column 0
        loss = F.cross_entropy(logits, labels)
        if self.training:
            self.enqueue(gather_no_grad(k))
        return MoCoOutput(loss=loss, logits=logits, q=q, k=k)


__all__ = ["MoCo", "MoCoConfig", "MoCoOutput", "Embedder", "pooled"]
