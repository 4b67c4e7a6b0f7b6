"""Multi-head self-attention with grouped key/value heads (Ainslie et al. 2023, GQA).

num_kv_heads == num_heads is MHA, 1 is MQA, anything dividing num_heads is GQA: each group of
num_heads / num_kv_heads query heads shares one key/value head. Computed with PyTorch SDPA.
Projection names (q_proj, k_proj, v_proj, o_proj) follow transformers' Llama/Qwen2.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError
from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.masks import sdpa_is_causal
from ocellus.nn.rope import apply_rotary


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, head_dim: int | None = None,
                 qkv_bias: bool = False, out_bias: bool = False, layer_idx: int = 0, causal: bool = True):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ConfigError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = head_dim or dim // num_heads
        self.layer_idx, self.causal = layer_idx, causal
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=out_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, cache: StaticKVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)     # [B, H, T, Dh]
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                                     # [B, Hkv, T_k, Dh]
        y = attend(q, k, v, mask, sdpa_is_causal(mask, T, self.causal))                  # [B, H, T, Dh]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
           scale: float | None = None) -> torch.Tensor:
    """SDPA with GQA: q [B, H, Tq, D], k/v [B, Hkv, Tk, D] -> [B, H, Tq, Dv]."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        # expand (a view) then reshape: one copy, the layout every SDPA backend accepts
        B, Hkv, Tk, D = k.shape
        k = k[:, :, None].expand(B, Hkv, groups, Tk, D).reshape(B, Hkv * groups, Tk, D)
        v = v[:, :, None].expand(B, Hkv, groups, Tk, v.shape[-1]).reshape(B, Hkv * groups, Tk, v.shape[-1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
