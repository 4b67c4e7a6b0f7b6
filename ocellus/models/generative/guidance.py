"""Classifier-free guidance (Ho & Salimans 2021, "Classifier-Free Diffusion Guidance").

One network is trained both conditionally and unconditionally (the condition is replaced by a
learned "null" condition with probability p_uncond, `drop_condition`); at sampling time the two
predictions are extrapolated away from the unconditional one. The literature writes this two ways:

    scale form (GLIDE, Stable Diffusion, diffusers' guidance_scale s):  uncond + s * (cond - uncond)
    weight form (Ho & Salimans eq. 6, guidance weight w):               (1 + w) * cond - w * uncond

They are the same line with s = 1 + w: s = 1 (w = 0) is the plain conditional model, s = 0
(w = -1) the unconditional one, s > 1 sharpens towards the condition. Both are written out here
and tests/unit/test_ddpm_guidance.py checks they agree. It applies to anything predicted per
condition: diffusion epsilons and MaskGIT / autoregressive logits alike.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ocellus.errors import ConfigError

MAX_GUIDANCE_SCALE = 50.0   # far beyond any useful value (samples saturate by ~10): larger is a typo


def check_guidance_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConfigError(f"guidance scale must be a finite number, got {scale!r}")
    if not 0.0 <= scale <= MAX_GUIDANCE_SCALE:
        raise ConfigError(f"guidance scale must be in [0, {MAX_GUIDANCE_SCALE:g}] (1 = no guidance, 0 = "
                          f"unconditional), got {scale}")
    return float(scale)


def guide_scale(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + s * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def guide_weight(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """(1 + w) * cond - w * uncond  (equals guide_scale with s = 1 + w)."""
    return (1 + w) * cond - w * uncond


def drop_condition(labels: torch.Tensor, null_id: int, p: float, generator: torch.Generator | None = None):
    """Training-time condition dropout: each label becomes the null label with probability p."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"condition dropout probability must be in [0, 1), got {p}")
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_id), labels)


def _stack(cond, null_cond):
    """cond and null_cond batched together: tensors [B, ...] -> [2B, ...], or a tuple of them (a caption's
    context [B, T, D] and its mask [B, T]) member by member."""
    if isinstance(cond, tuple):
        return tuple(torch.cat([c, u]) for c, u in zip(cond, null_cond, strict=True))
    return torch.cat([cond, null_cond])


def guided(fn: Callable, x: torch.Tensor, cond, null_cond, scale: float, *args) -> torch.Tensor:
    """fn(x, *args, cond) guided by `scale`, both halves in one batch (scale 1 skips the null half)."""
    scale = check_guidance_scale(scale)
    if scale == 1.0:
        return fn(x, *args, cond)
    both = fn(torch.cat([x, x]), *(torch.cat([a, a]) for a in args), _stack(cond, null_cond))
    c, u = both.chunk(2)
    return guide_scale(c, u, scale)
