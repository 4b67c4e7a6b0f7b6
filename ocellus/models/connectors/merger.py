"""Qwen2-VL's patch merger (Wang et al. 2024, "Qwen2-VL", sec. 2.1): each m x m group of
neighbouring ViT patches (m = spatial_merge_size, 2) is normed, concatenated and sent through a
2-layer GELU MLP, so the LLM sees one token per 2x2 patches (a 4x shorter sequence).

The patches arrive with each group contiguous (data/image_tiling.qwen2vl_patchify orders them
so), which makes the merge a plain reshape. Matches transformers' PatchMerger (LayerNorm,
Qwen2-VL) and Qwen2_5_VLPatchMerger (RMSNorm, Qwen2.5-VL); names ln_q, mlp.0, mlp.2 are theirs.
"""
from __future__ import annotations

import torch
from torch import nn

from ocellus.errors import InputError
from ocellus.nn.norms import LayerNorm, RMSNorm


class PatchMerger(nn.Module):
    def __init__(self, context_dim: int, out_dim: int, merge_size: int = 2, norm: str = "layernorm",
                 eps: float = 1e-6):
        super().__init__()
        self.group = merge_size * merge_size
        self.hidden_size = context_dim * self.group
        self.ln_q = LayerNorm(context_dim, eps=eps) if norm == "layernorm" else RMSNorm(context_dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(self.hidden_size, self.hidden_size), nn.GELU(),
                                 nn.Linear(self.hidden_size, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [L, C] patches, each merge group contiguous -> [L / m^2, out_dim]."""
        if x.shape[0] % self.group:
            raise InputError(f"patch merger: {x.shape[0]} patches is not a multiple of the merge group {self.group}")
        return self.mlp(self.ln_q(x).view(-1, self.hidden_size))              # [L/m^2, out]
