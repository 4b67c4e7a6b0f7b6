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
from ocellus.nn.kept_rows import KeptRows
from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.masks import sdpa_is_causal
from ocellus.nn.norms import RMSNorm
from ocellus.nn.rope import apply_rotary, rotate

# Take attend's GPU GQA path (K/V heads copied over their query groups) on CPU too. Off by
# default; tests switch it on so that the branch every CUDA run takes is checked on CPU as well.
EXPAND_KV_ON_CPU = False


class Attention(nn.Module):
    # x -> q|k|v [..., (H + 2 Hkv) * Dh] in one call while infer/prepack.py holds the three projections as one
    # packed matrix (the decode default on CPU); None: three Linear calls
    fused_qkv = None

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, head_dim: int | None = None,
                 qkv_bias: bool = False, out_bias: bool = False, layer_idx: int = 0, causal: bool = True,
                 qk_norm_eps: float | None = None):
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
        # Qwen3: each head's q and k RMS-normed over its head_dim before RoPE (qk_norm_eps set); None: not normed
        self.q_norm = self.k_norm = None
        if qk_norm_eps is not None:
            self.q_norm, self.k_norm = RMSNorm(self.head_dim, qk_norm_eps), RMSNorm(self.head_dim, qk_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, cache: StaticKVCache | None = None,
                rows: KeptRows | None = None) -> torch.Tensor:
        """x [B, T, dim] -> [B, T, dim]; with `rows`, queries only at the kept positions -> [N, dim]
        (keys and values still at every position)."""
        B, T, _ = x.shape
        if T == 1 and cache is not None:
            return self._decode_one(x, rope, mask, cache)
        if rows is not None:
            return self._kept_rows(x, rope, mask, rows)
        if self.fused_qkv is None:
            q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
            k, v = self._keys_values(x, rope)                                             # [B, Hkv, T, Dh]
        else:
            q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in self._split_qkv(self.fused_qkv(x)))
            k = self.normed_k(k)
            k = k if rope is None else apply_rotary(k, *rope)
        q = self.normed_q(q)
        if rope is not None:
            q = apply_rotary(q, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                                     # [B, Hkv, T_k, Dh]
        y = attend(q, k, v, mask, sdpa_is_causal(mask, T, self.causal))                  # [B, H, T, Dh]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def _split_qkv(self, qkv):
        """q|k|v [..., (H + 2 Hkv) * Dh] -> q [..., H * Dh], k, v [..., Hkv * Dh] (views)"""
        kv = self.num_kv_heads * self.head_dim
        return qkv.split((self.num_heads * self.head_dim, kv, kv), dim=-1)

    def _keys_values(self, x, rope):
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
        k = self.normed_k(k)
        return (k if rope is None else apply_rotary(k, *rope)), v

    def normed_q(self, q: torch.Tensor) -> torch.Tensor:
        """q [..., Dh]: each head's RMSNorm (q_norm), or q as it is. (RMSNorm reads only the last dim: any layout.)"""
        return q if self.q_norm is None else self.q_norm(q)

    def normed_k(self, k: torch.Tensor) -> torch.Tensor:
        """k [..., Dh]: each head's RMSNorm (k_norm), or k as it is."""
        return k if self.k_norm is None else self.k_norm(k)

    def _kept_rows(self, x, rope, mask, rows: KeptRows):
        if not self.causal:
            raise ConfigError("kept-row attention is for causal decoders")
        B, T, _ = x.shape
        n = rows.pos.shape[1]
        q = self.q_proj(rows.take(x)).view(B, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, n, Dh]
        q = self.normed_q(q)
        k, v = self._keys_values(x, rope)                                                # [B, Hkv, T, Dh]
        if rope is not None:
            q = apply_rotary(q, *(rows.take(r) for r in rope))
        y = attend(q, k, v, rows.query_mask(mask, T), is_causal=False)                   # [B, H, n, Dh]
        return self.o_proj(rows.unpack(y.transpose(1, 2).reshape(B, n, self.num_heads * self.head_dim)))

    def _decode_one(self, x, rope, mask, cache):
        """forward() for one new token per row: the same math with the transposes that T == 1
        makes needless dropped, q and k rotated together, and RoPE applied with half the ops
        (nn/rope.rotate, its tables made once per step for all layers). Decoding a small model on
        CPU is bound by per-op overhead (~25 small ops per layer per token; each costs 2-3x more
        than in a micro-benchmark since the weights streaming through flush the caches): this
        saves 15 of them per layer. Results are bitwise equal to the general path."""
        B, H, Hkv, D = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        if self.fused_qkv is None:
            qkv = torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1)  # [B, 1, (H+2Hkv)*D]
        else:
            qkv = self.fused_qkv(x)                                                    # [B, 1, (H+2Hkv)*D]
        qkv = qkv.view(B, H + 2 * Hkv, 1, D)                                           # heads: q | k | v
        qk = qkv[:, :H + Hkv]                                                          # [B, H+Hkv, 1, D]
        if self.q_norm is not None:                                                    # (ops only when normed)
            qk = torch.cat((self.normed_q(qk[:, :H]), self.normed_k(qk[:, H:])), dim=1)
        if rope is not None:
            qk = rotate(qk, rope)
        k, v = cache.update(self.layer_idx, qk[:, H:], qkv[:, H + Hkv:])               # [B, Hkv, T_k, D]
        y = attend(qk[:, :H], k, v, mask, is_causal=False)                               # [B, H, 1, D]
        return self.o_proj(y.reshape(B, 1, H * D))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
           scale: float | None = None) -> torch.Tensor:
    """SDPA with GQA: q [B, H, Tq, D], k/v [B, Hkv, Tk, D] -> [B, H, Tq, Dv]."""
    B, H, Tq, _ = q.shape
    Hkv = k.shape[1]
    groups = H // Hkv
    if groups > 1 and Tq == 1 and not is_causal and (mask is None or mask.shape[1] == 1):
        # Decoding: one query per head. The `groups` query heads sharing a kv head become that
        # head's query rows, so K/V are read in place instead of copied `groups` times (5-6x
        # faster attention at batch 8 in bf16 on CPU). Rows see all keys: no causal mask needed.
        y = F.scaled_dot_product_attention(q.reshape(B, Hkv, groups, q.shape[-1]), k, v, attn_mask=mask, scale=scale)
        return y.reshape(B, H, 1, v.shape[-1])
    if groups > 1 and q.device.type == "cpu" and not EXPAND_KV_ON_CPU:
        # CPU flash attention shares kv heads natively: no copy of K/V forward, no sum of the
        # copies' gradients backward (fwd+bwd ~15% faster at the tiny LLaVA's training shapes)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=True)
    if groups > 1:
        # expand (a view) then reshape: one copy, the layout every GPU SDPA backend accepts
        B, Hkv, Tk, D = k.shape
        k = k[:, :, None].expand(B, Hkv, groups, Tk, D).reshape(B, Hkv * groups, Tk, D)
        v = v[:, :, None].expand(B, Hkv, groups, Tk, v.shape[-1]).reshape(B, Hkv * groups, Tk, v.shape[-1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
