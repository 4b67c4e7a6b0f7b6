"""One initialisation for the parity tests' random reference models: attention far from uniform.

transformers' random init (N(0, 0.02) weights) makes a tiny model's attention scores ~0.03, so every
query attends almost uniformly and every activation is ~0.1: a transposed axis, a swapped pair of
rotary halves or a dropped gate then moves logits by ~1e-5, under the tests' tolerances (the Qwen2-VL
ViT with its 2D RoPE rows and columns swapped passed at 1e-4). Here every matrix (linear, conv,
embedding) is redrawn from N(0, 1 / fan_in), which keeps activations at unit scale through the layers,
so attention scores q.k / sqrt(d) have std ~1 and logits std ~1, and the query/key projections can be
scaled further by `qk_gain`. Measured on the Qwen2-VL case: parity error 6e-6, the rows/columns swap 1.1
(tolerance 1e-4). Biases and norms are left as the caller set them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

QK_NAMES = ("q_proj.weight", "k_proj.weight", "query.weight", "key.weight")
FUSED_QKV = ("qkv.weight",)


@torch.no_grad()
def spread_init(model: nn.Module, qk_gain: float = 1.0, seed: int = 0) -> nn.Module:
    """Redraw every >= 2-d parameter of `model` from N(0, 1/fan_in) (fan_in: all but the first dim, after
    dropping leading 1s, so a [1, N, D] table of learned tokens gets 1/D as an embedding table does),
    query/key projections (and the q, k thirds of a fused qkv) times qk_gain. Returns the model."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        shape = p.shape
        while len(shape) > 2 and shape[0] == 1:   # [1, N, D] token tables (query tokens, cls, positions)
            shape = shape[1:]
        fan_in = shape[1:].numel()
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) / math.sqrt(fan_in))
        if name.endswith(QK_NAMES):
            p.mul_(qk_gain)
        elif name.endswith(FUSED_QKV):
            third = p.shape[0] // 3
            p[:2 * third].mul_(qk_gain)
    return model
