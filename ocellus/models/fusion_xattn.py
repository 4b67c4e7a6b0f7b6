"""Deep fusion: gated cross-attention dense blocks (Alayrac et al. 2022, "Flamingo", section 2.2,
Fig. 4) and the per-token media mask of interleaved image-text sequences (section 2.3).

Matches open_flamingo's `MaskedCrossAttention` / `GatedCrossAttentionBlock`
(open_flamingo/src/helpers.py) with only_attend_immediate_media=True:

    x = x + tanh(alpha_attn) * CrossAttn(q = LN(x), kv = the resampled visual tokens)
    x = x + tanh(alpha_ff)   * FFN(x)

alpha_attn and alpha_ff start at 0, so a freshly inserted block is the identity and the frozen
language model's outputs are unchanged at initialisation ("tanh gating ... ensures that at
initialisation, the model yields the same results as the pretrained LM"): x + 0 * y == x exactly.

Which media a text token sees (section 2.3): with `media_time` = how many <image> tokens occur
at or before a position (the <image> token itself included), a token with media_time t attends
only to the visual tokens of image t - the one immediately preceding it; tokens before the first
image (t = 0) attend to nothing and get no cross-attention update at all.

The keys/values of the media are projected once per block (`media_kv`), so generation computes
them at prefill and reuses them on every decode step.
"""
from __future__ import annotations

import torch
from torch import nn

from ocellus.models.connectors.perceiver import FeedForward
from ocellus.nn.attention import attend
from ocellus.nn.norms import LayerNorm


def media_time(input_ids: torch.Tensor, media_token_id: int) -> torch.Tensor:
    """input_ids [B, T] -> [B, T]: the 1-based index of the latest media at or before each
    position (0 before the first one). Its counterpart for keys is `media_slots`."""
    return (input_ids == media_token_id).long().cumsum(dim=-1)                     # [B, T]


def media_mask(text_time: torch.Tensor, num_media: int, tokens_per_media: int) -> torch.Tensor:
    """text_time [B, T] -> boolean attention mask [B, 1, T, num_media * tokens_per_media]:
    True where token t may read the visual token. Rows with text_time 0 (no preceding media) are
    all True here only so that softmax stays finite; `GatedCrossAttentionBlock` zeroes their update."""
    slots = torch.arange(1, num_media + 1, device=text_time.device).repeat_interleave(tokens_per_media)  # [M*n]
    mask = text_time[:, :, None] == slots                                          # [B, T, M*n]
    mask |= (text_time == 0)[:, :, None]
    return mask[:, None]                                                           # [B, 1, T, M*n]


class MaskedCrossAttention(nn.Module):
    """Text queries [B, T, D] attend to projected media keys/values; names as open_flamingo."""

    def __init__(self, dim: int, dim_visual: int, heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm = LayerNorm(dim, eps=eps)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def media_kv(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """media [B, M, n, Dv] (M media per row, n visual tokens each) -> k, v [B, H, M*n, Dh]."""
        B = media.shape[0]
        k, v = self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1)                    # 2 x [B, M*n, H*Dh]
        k = k.view(B, -1, self.heads, self.head_dim).transpose(1, 2)               # [B, H, M*n, Dh]
        v = v.view(B, -1, self.heads, self.head_dim).transpose(1, 2)               # [B, H, M*n, Dh]
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.to_q(self.norm(x)).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
        out = attend(q, kv[0], kv[1], mask, is_causal=False)                       # [B, H, T, Dh]
        return self.to_out(out.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))  # [B, T, D]


class GatedCrossAttentionBlock(nn.Module):
    """GATED XATTN-DENSE: tanh-gated cross-attention then tanh-gated FFN, both gates at 0 initially."""

    def __init__(self, dim: int, dim_visual: int, heads: int = 8, head_dim: int = 64, ff_mult: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, heads, head_dim, eps)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(dim, ff_mult, eps)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None, has_media: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D]; kv from `attn.media_kv` (None: no media in the batch, the FFN still runs);
        mask [B, 1, T, M*n] from `media_mask`; has_media [B, T, 1]: 0 where no media precedes."""
        if kv is not None:
            y = self.attn(x, kv, mask) * has_media.to(x.dtype)                     # [B, T, D] 0 before image 1
            x = x + self.attn_gate.tanh().to(x.dtype) * y
        return x + self.ff_gate.tanh().to(x.dtype) * self.ff(x)
