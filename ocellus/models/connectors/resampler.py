"""Qwen-VL's position-aware vision-language adapter (Bai et al. 2023, "Qwen-VL: A Versatile
Vision-Language Model for Understanding, Localization, Text Reading, and Beyond", sec. 2.1):
one cross-attention layer in which N learned queries (256 in the paper) attend over the ViT's
patch features, compressing any number of patches to N tokens for the LLM. 2D sin-cos absolute
position embeddings are added to the queries and to the keys (not the values), so the compressed
tokens keep where each feature came from -- which grounding (boxes as text) needs.

Layout of QwenLM/Qwen-VL's visual.py (`Resampler` + the `ln_post` / `proj` that follow it):
    kv  = ln_kv(kv_proj(x))                                # [N, P, D]   (kv_proj: Dv -> D, no bias)
    q   = ln_q(query)                                      # [Q, D]
    out = MHA(q + pos(Q grid), kv + pos(P grid), kv)       # [N, Q, D]
    out = ln_post(out) @ proj                              # [N, Q, D]
The position table is built for the query grid (sqrt(Q) per side); keys on another grid get it
resized bicubically (Qwen-VL's `get_abs_pos`), so one resampler serves any square patch grid.

`pos_scale` multiplies the table (1: the paper). Why a knob: the table's entries are sines in [-1, 1] added to
layer-normed features (std 1 a channel). At the paper's width and grid (D = 4096, 16x16 queries) positions differ
by ~9 std along their main directions, far above the features; at toy scale (D = 128, 4x4) by 1.4 std along two
directions and under 0.5 along the rest, so position hardly enters the attention logits. Measured on the trained
toy Qwen-VL: each query put 0.062 of its weight on its own patch (uniform: 1/16) and blended ~5 patches,
mixing objects (docs/VLM_COMPARISON.md, session 13).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.nn.norms import LayerNorm
from ocellus.nn.positional import resize_grid, sinusoidal_encoding


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim]: sin(p * w_k) for k < dim/2, then cos(p * w_k); w_k = 10000^(-2k/dim):
    Vaswani et al.'s encoding with the sines and cosines in two halves (MAE / Qwen-VL), not interleaved."""
    pairs = sinusoidal_encoding(positions, dim).view(-1, dim // 2, 2)                  # [M, dim/2, (sin, cos)]
    return torch.cat([pairs[..., 0], pairs[..., 1]], dim=1)                             # [M, dim]


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """[grid*grid, dim] for a row-major grid: the first dim/2 channels encode the column (x), the
    last dim/2 the row (y) -- MAE's get_2d_sincos_pos_embed, which Qwen-VL uses."""
    if dim % 4:
        raise ConfigError(f"2D sin-cos position embeddings need a dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # each [grid, grid]
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)


class Resampler(nn.Module):
    """[N, P, in_dim] ViT features -> [N, num_queries, out_dim]. num_queries must be a square
    (the queries sit on a sqrt x sqrt grid for their position embeddings)."""

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 256, num_heads: int = 8, eps: float = 1e-6,
                 pos_scale: float = 1.0):
        super().__init__()
        grid = math.isqrt(num_queries)
        if grid * grid != num_queries:
            raise ConfigError(f"resampler num_queries must be a square (the queries form a grid), got {num_queries}")
        if out_dim % num_heads:
            raise ConfigError(f"resampler out_dim={out_dim} is not divisible by num_heads={num_heads}")
        if not (isinstance(pos_scale, (int, float)) and math.isfinite(pos_scale) and pos_scale > 0):
            raise ConfigError(f"resampler pos_scale must be a positive number, got {pos_scale!r}")
        self.num_queries, self.num_heads, self.pos_scale = num_queries, num_heads, float(pos_scale)
        # fixed, not learned; rebuilt from the formula, so not saved in checkpoints
        self.register_buffer("pos_embed", sincos_2d(out_dim, grid), persistent=False)     # [Q, D]
        self.query = nn.Parameter(torch.empty(num_queries, out_dim))
        self.kv_proj = nn.Linear(in_dim, out_dim, bias=False) if in_dim != out_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(out_dim, num_heads, batch_first=True)
        self.ln_q = LayerNorm(out_dim, eps=eps)
        self.ln_kv = LayerNorm(out_dim, eps=eps)
        self.ln_post = LayerNorm(out_dim, eps=eps)
        self.proj = nn.Parameter(torch.empty(out_dim, out_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        nn.init.normal_(self.proj, std=out_dim ** -0.5)

    def key_positions(self, num_patches: int) -> torch.Tensor:
        """[P, D]: the query-grid table resized (bicubic) to the patches' square grid (unscaled)."""
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise InputError(f"the resampler needs a square patch grid, got {num_patches} patches")
        return resize_grid(self.pos_embed, (side, side))

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, P, in_dim] (a square grid of patches, row-major); positions [P, D] overrides the key
        positions (default: key_positions(P))."""
        if x.dim() != 3:
            raise InputError(f"resampler input must be [N, P, D] patch features, got shape {tuple(x.shape)}")
        N, P, _ = x.shape
        pos = self.key_positions(P) if positions is None else positions
        kv = self.ln_kv(self.kv_proj(x))                                                   # [N, P, D]
        s = self.pos_scale
        q = (self.ln_q(self.query) + s * self.pos_embed).to(kv.dtype).expand(N, -1, -1)    # [N, Q, D]
        out = self.attn(q, kv + s * pos.to(kv.dtype), kv, need_weights=False)[0]           # [N, Q, D]
        return self.ln_post(out) @ self.proj.to(out.dtype)                                 # [N, Q, D]
