"""Multi-head latent attention (MLA, DeepSeek-AI 2024, "DeepSeek-V2", arXiv 2405.04434, section 2.1).

Keys and values are not cached per head. Every token is compressed into one latent vector
    c_kv = RMSNorm(W_DKV x)                       # [kv_lora_rank], shared by all heads
from which the per-head "content" keys and the values are recovered by an up-projection
    [k_nope_h ; v_h] = W_UKV_h c_kv               # kv_b_proj
RoPE cannot pass through that up-projection (a rotation between W_UK and the query would stop
it from being absorbed), so position lives in a separate, decoupled key k_pe of qk_rope_head_dim
dims, computed from x and shared by all heads like an MQA key. The query of head h is
[q_nope_h ; RoPE(q_pe_h)], its key [k_nope_h ; RoPE(k_pe)], and the cache holds only c_kv and
the rotated k_pe: (kv_lora_rank + qk_rope_head_dim) numbers per token and layer instead of
num_heads * (qk_nope + qk_rope + v_head_dim).

Two equal ways to compute it:
  naive    - up-project c_kv to full per-head K/V and run SDPA (used without a cache: training,
             full-sequence scoring).
  absorbed - q_nope_h . (W_UK_h c) = (W_UK_h^T q_nope_h) . c, so fold W_UK into the query and
             score straight against the cached latents; likewise apply the probabilities to the
             latents and only then W_UV. Per-head K/V are never materialised (used with a cache).

Parameter names, the optional low-rank query (q_a_proj -> q_a_layernorm -> q_b_proj), the
interleaved-pair RoPE layout and the yarn softmax-scale correction match transformers'
`DeepseekV3Attention` (models/deepseek_v3/modeling_deepseek_v3.py), so checkpoints map 1:1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.nn.attention import attend
from ocellus.nn.masks import sdpa_is_causal
from ocellus.nn.norms import RMSNorm
from ocellus.nn.rope import RopeConfig, apply_rotary


def mla_softmax_scale(qk_head_dim: int, rope_config: RopeConfig | None = None) -> float:
    """1/sqrt(qk_nope + qk_rope), times yarn's mscale(factor, mscale_all_dim)^2 when the rope
    config carries `mscale_all_dim` (DeepSeek-V2/V3 long-context checkpoints). Yarn already
    scales cos/sin by mscale/mscale_all_dim; DeepSeek moves the mscale_all_dim part into the
    softmax scale instead, so both corrections are needed to reproduce its logits."""
    scale = qk_head_dim ** -0.5
    if rope_config is not None and rope_config.rope_type != "default":
        m_all = rope_config.params.get("mscale_all_dim")
        factor = rope_config.params.get("factor")
        if m_all and factor is not None and factor > 1:
            mscale = 0.1 * m_all * math.log(factor) + 1.0
            scale = scale * mscale * mscale
    return scale


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """[..., (x0, x1), (x2, x3), ...] -> [..., x0, x2, ..., x1, x3, ...].

    DeepSeek's weights rotate adjacent pairs; after this permutation the same rotation is the
    `rotate_half` one that `apply_rotary` does. q and k get the same permutation, so their dot
    products (all attention sees) are unchanged."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class LatentKVCache:
    """Preallocated MLA cache: per layer the latent c_kv [B, T_max, kv_lora_rank] and the rotated
    RoPE key k_pe [B, T_max, qk_rope_head_dim], nothing per head. Same protocol as
    `StaticKVCache`: every layer calls `update`, then the model calls `advance` once."""

    def __init__(self, num_layers: int, batch_size: int, max_len: int, kv_lora_rank: int, qk_rope_head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.c_kv = [torch.zeros(batch_size, max_len, kv_lora_rank, dtype=dtype, device=device)
                     for _ in range(num_layers)]
        self.k_pe = [torch.zeros(batch_size, max_len, qk_rope_head_dim, dtype=dtype, device=device)
                     for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0  # tokens already written (same for every layer once a forward finishes)

    def update(self, layer: int, c_kv: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write c_kv [B, T, R] and k_pe [B, T, Dr] after the cached tokens; return all so far."""
        start, end = self.length, self.length + c_kv.shape[1]
        if end > self.max_len:
            raise InputError(f"latent KV cache holds {self.max_len} tokens; writing {c_kv.shape[1]} after "
                             f"{start} exceeds it")
        self.c_kv[layer][:, start:end] = c_kv
        self.k_pe[layer][:, start:end] = k_pe
        return self.c_kv[layer][:, :end], self.k_pe[layer][:, :end]                 # [B, T_k, R], [B, T_k, Dr]

    def advance(self, n: int) -> None:
        """Called once per model forward, after every layer wrote its n new tokens."""
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row b of the cache becomes row index[b]."""
        for buf in (*self.c_kv, *self.k_pe):
            buf[:, : self.length] = buf[index, : self.length]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.c_kv, *self.k_pe))


class MultiHeadLatentAttention(nn.Module):
    """x [B, T, dim] -> [B, T, dim]. `rope` is (cos, sin) [B, T, qk_rope_head_dim] from a
    RotaryEmbedding over qk_rope_head_dim dims; `mask` is build_attention_mask's bool
    [B, 1, T_q, T_k] (None = causal); with `cache` the absorbed path runs.

    q_lora_rank=None gives the full-rank q_proj (DeepSeek-V2-Lite). rope_config is only read for
    the yarn softmax-scale correction. The two inner RMSNorms use eps (1e-6, as transformers
    builds them regardless of the model's rms_norm_eps)."""

    def __init__(self, dim: int, num_heads: int, q_lora_rank: int | None, kv_lora_rank: int,
                 qk_nope_head_dim: int, qk_rope_head_dim: int, v_head_dim: int, rope_interleave: bool = True,
                 layer_idx: int = 0, eps: float = 1e-6, attention_bias: bool = False,
                 rope_config: RopeConfig | None = None):
        super().__init__()
        sizes = {"dim": dim, "num_heads": num_heads, "kv_lora_rank": kv_lora_rank,
                 "qk_nope_head_dim": qk_nope_head_dim, "qk_rope_head_dim": qk_rope_head_dim,
                 "v_head_dim": v_head_dim}
        if q_lora_rank is not None:
            sizes["q_lora_rank"] = q_lora_rank
        positive_ints(sizes, sizes, "MLA size {}")
        if qk_rope_head_dim % 2:
            raise ConfigError(f"qk_rope_head_dim={qk_rope_head_dim} must be even: RoPE rotates pairs of dims")
        if rope_config is not None and rope_config.rotary_dim != qk_rope_head_dim:
            raise ConfigError(f"rope config rotates {rope_config.rotary_dim} dims but qk_rope_head_dim is "
                              f"{qk_rope_head_dim}; build it with head_dim=qk_rope_head_dim")
        self.num_heads, self.layer_idx, self.rope_interleave = num_heads, layer_idx, rope_interleave
        self.q_lora_rank, self.kv_lora_rank = q_lora_rank, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.softmax_scale = mla_softmax_scale(self.qk_head_dim, rope_config)

        if q_lora_rank is None:
            self.q_proj = nn.Linear(dim, num_heads * self.qk_head_dim, bias=False)
        else:  # the query is compressed too, to save activation memory in training (paper 2.1.2)
            self.q_a_proj = nn.Linear(dim, q_lora_rank, bias=attention_bias)
            self.q_a_layernorm = RMSNorm(q_lora_rank, eps)
            self.q_b_proj = nn.Linear(q_lora_rank, num_heads * self.qk_head_dim, bias=False)
        # one projection makes both the latent and the shared RoPE key ("with MQA": one k_pe head)
        self.kv_a_proj_with_mqa = nn.Linear(dim, kv_lora_rank + qk_rope_head_dim, bias=attention_bias)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, eps)
        # rows are laid out per head as [k_nope (qk_nope_head_dim) ; v (v_head_dim)]
        self.kv_b_proj = nn.Linear(kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim), bias=False)
        self.o_proj = nn.Linear(num_heads * v_head_dim, dim, bias=attention_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
                cache: LatentKVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, Dn, Dr, R = self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.kv_lora_rank
        cos, sin = rope
        if cos.shape[-1] != Dr or cos.shape[-2] != T:
            raise InputError(f"rope cos/sin must be [B, {T}, {Dr}] (qk_rope_head_dim), got {tuple(cos.shape)}")

        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, H, self.qk_head_dim).transpose(1, 2)                     # [B, H, T, Dn + Dr]
        q_nope, q_pe = q.split([Dn, Dr], dim=-1)                                  # [B, H, T, Dn], [B, H, T, Dr]
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([R, Dr], dim=-1)            # [B, T, R], [B, T, Dr]
        c_kv = self.kv_a_layernorm(c_kv)

        if self.rope_interleave:
            q_pe, k_pe = deinterleave(q_pe), deinterleave(k_pe)
        q_pe = apply_rotary(q_pe, cos, sin)                                       # [B, H, T, Dr]
        k_pe = apply_rotary(k_pe[:, None], cos, sin)[:, 0]                        # [B, T, Dr] (one shared head)

        if cache is None:
            y = self._naive(q_nope, q_pe, c_kv, k_pe, mask)                       # [B, H, T, Dv]
        else:
            c_kv, k_pe = cache.update(self.layer_idx, c_kv, k_pe)                 # [B, T_k, R], [B, T_k, Dr]
            y = self._absorbed(q_nope, q_pe, c_kv, k_pe, mask)                    # [B, H, T, Dv]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * self.v_head_dim))  # [B, T, D]

    def _naive(self, q_nope, q_pe, c_kv, k_pe, mask):
        """Up-project the latents to full per-head keys/values, then ordinary SDPA."""
        B, H, T, _ = q_nope.shape
        Tk = c_kv.shape[1]
        kv = self.kv_b_proj(c_kv).view(B, Tk, H, self.qk_nope_head_dim + self.v_head_dim)  # [B, Tk, H, Dn + Dv]
        kv = kv.transpose(1, 2)                                                   # [B, H, Tk, Dn + Dv]
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)   # [B, H, Tk, Dn], [B, H, Tk, Dv]
        k = torch.cat((k_nope, k_pe[:, None].expand(B, H, Tk, self.qk_rope_head_dim)), dim=-1)  # [B, H, Tk, Dn + Dr]
        q = torch.cat((q_nope, q_pe), dim=-1)                                     # [B, H, T, Dn + Dr]
        return attend(q, k, v, mask, sdpa_is_causal(mask, T), scale=self.softmax_scale)  # [B, H, T, Dv]

    def _absorbed(self, q_nope, q_pe, c_kv, k_pe, mask):
        """Attention in latent space: W_UK folded into the query, W_UV applied after the
        weighted sum. Cost per step is O(H * T_k * (R + Dr)) reads of the small cache, not of
        per-head keys/values that were never stored."""
        B, H, T, _ = q_nope.shape
        Tk, R = c_kv.shape[1], self.kv_lora_rank
        if not self.kv_b_proj.weight.is_floating_point():   # e.g. an int8 kv_b_proj: its scale lives elsewhere
            raise ConfigError(f"MLA decoding folds kv_b_proj's float weight into the query; layer {self.layer_idx}'s "
                              f"is {self.kv_b_proj.weight.dtype} (an int8-quantized kv_b_proj is not supported)")
        w = self.kv_b_proj.weight.view(H, self.qk_nope_head_dim + self.v_head_dim, R)  # [H, Dn + Dv, R]
        w_uk, w_uv = w.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)    # [H, Dn, R], [H, Dv, R]

        q_lat = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)                      # [B, H, T, R]
        # fold heads into the query rows: one [B, H*T, .] x [B, ., Tk] matmul reads each cached
        # latent once for all heads (broadcasting over H would copy the cache H times)
        scores = (q_lat.reshape(B, H * T, R) @ c_kv.transpose(1, 2)
                  + q_pe.reshape(B, H * T, self.qk_rope_head_dim) @ k_pe.transpose(1, 2))  # [B, H*T, Tk]
        scores = scores.view(B, H, T, Tk) * self.softmax_scale                    # [B, H, T, Tk]

        if mask is None and T > 1:
            # causal with the queries at the end: query i sits at absolute position Tk - T + i
            mask = torch.ones(T, Tk, dtype=torch.bool, device=scores.device).tril(Tk - T)  # [T, Tk]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(c_kv.dtype)  # [B, H, T, Tk]

        o_lat = (probs.reshape(B, H * T, Tk) @ c_kv).view(B, H, T, R)             # [B, H, T, R]
        return torch.einsum("bhtr,hvr->bhtv", o_lat, w_uv)                        # [B, H, T, Dv]
