"""The one mask builder: causal, padding and per-document (packing) masks combined.

Returns a boolean [B, 1, T_q, T_k] mask (True = may attend) for SDPA, or None when plain causal
attention over everything suffices (SDPA's `is_causal` path is faster).
Query i sits at absolute position T_k - T_q + i (the cache holds the first T_k - T_q keys).
Every query may always attend to itself: a left-padding query would otherwise see no key at
all, and SDPA turns a fully masked row into NaN that then leaks through 0 * NaN.
"""
from __future__ import annotations

import torch

from ocellus.errors import InputError


def build_attention_mask(q_len: int, kv_len: int, *, attention_mask: torch.Tensor | None = None,
                         document_ids: torch.Tensor | None = None, causal: bool = True,
                         device: torch.device | str | None = None) -> torch.Tensor | None:
    """attention_mask: [B, T_k] 1 = real token, 0 = padding. document_ids: [B, T_k] ints, keys and
    queries attend only within their own document (the last T_q entries label the queries)."""
    if attention_mask is not None and attention_mask.shape[-1] != kv_len:
        raise InputError(f"attention_mask covers {attention_mask.shape[-1]} tokens, expected {kv_len} (cache + new)")
    if document_ids is not None and document_ids.shape[-1] != kv_len:
        raise InputError(f"document_ids covers {document_ids.shape[-1]} tokens, expected {kv_len}")
    no_padding = attention_mask is None or bool(attention_mask.all())
    if no_padding and document_ids is None and (not causal or q_len in (1, kv_len)):
        return None  # SDPA's own causal (or full) path; see `sdpa_is_causal`
    if device is None:
        given = attention_mask if attention_mask is not None else document_ids
        device = given.device if given is not None else None
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]     # [T_q, 1]
    k_pos = torch.arange(kv_len, device=device)[None, :]                     # [1, T_k]
    mask = (k_pos <= q_pos) if causal else torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    mask = mask[None, None]                                                  # [1, 1, T_q, T_k]
    if attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]                # [B, 1, T_q, T_k]
    if document_ids is not None:
        q_doc = document_ids[:, kv_len - q_len:]                             # [B, T_q]
        mask = mask & (q_doc[:, None, :, None] == document_ids[:, None, None, :])
    return mask | (q_pos == k_pos)[None, None]                               # self always visible


def sdpa_is_causal(mask: torch.Tensor | None, q_len: int, causal: bool = True) -> bool:
    """With no explicit mask, SDPA must apply causality itself, except for a single query
    (which sees every cached key). Its `is_causal` aligns top-left, correct only when T_q == T_k,
    which is the only case build_attention_mask leaves to it."""
    return mask is None and causal and q_len > 1
