"""Logit processors and token choice. Each filter keeps exactly the set transformers' warper of
the same name keeps (ties included); removed entries become -inf.

Order (as transformers applies them): repetition penalty, no-repeat n-grams, the banned ids (eos before
min_new_tokens), then when sampling temperature, top-k, top-p, min-p; then argmax or a multinomial draw.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float,
                       padding: torch.Tensor | None = None) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): logits of tokens already in `seen` [B, T] are divided by the
    penalty when positive and multiplied when negative, so both move towards less likely. padding [B, T]: the
    left padding of `seen`, whose ids count for nothing (transformers' generate skips it too)."""
    vocab = scores.shape[-1]
    if padding is not None:   # padding reads a column past the vocabulary, dropped at the end
        seen = seen.masked_fill(padding, vocab)
        scores = torch.nn.functional.pad(scores, (0, 1))
    picked = scores.gather(1, seen)                                          # [B, T]
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, seen, picked)[:, :vocab]


def no_repeat_ngram(scores: torch.Tensor, seen: torch.Tensor, n: int) -> torch.Tensor:
    """transformers' NoRepeatNGramLogitsProcessor: a token that would complete an n-gram already in the row's ids
    `seen` [B, T] (prompt, padding and all) is removed. Counted, not scattered, since the same token may be both
    banned and not by different windows."""
    if seen.shape[1] < n:
        return scores
    windows = seen.unfold(1, n, 1)                                           # [B, W, n]
    hit = (windows[..., :-1] == seen[:, None, seen.shape[1] - n + 1:]).all(-1)   # [B, W] its first n-1 are the last
    counts = torch.zeros(scores.shape, dtype=torch.long, device=scores.device)
    counts.scatter_add_(1, windows[..., -1], hit.long())
    return scores.masked_fill(counts > 0, NEG_INF)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(max(k, 1), scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]                    # [B, 1]
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p_filter(scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability mass reaches p."""
    sorted_scores, order = torch.sort(scores, descending=False, dim=-1)     # ascending
    mass_below = sorted_scores.softmax(-1).cumsum(-1)                        # [B, V]
    drop_sorted = mass_below <= (1 - p)                                      # the low tail holding <= 1-p
    drop_sorted[..., -min_keep:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, NEG_INF)


def min_p_filter(scores: torch.Tensor, min_p: float, min_keep: int = 1) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the top token's."""
    probs = scores.softmax(-1)
    drop = probs < min_p * probs.amax(-1, keepdim=True)
    order = torch.argsort(scores, descending=True, dim=-1)
    drop_sorted = drop.gather(1, order)
    drop_sorted[..., :min_keep] = False
    return scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), NEG_INF)


def process_logits(scores: torch.Tensor, seen: torch.Tensor, *, do_sample: bool, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                   repetition_penalty_: float | None = None, no_repeat_ngram_size: int | None = None,
                   banned: torch.Tensor | None = None, padding: torch.Tensor | None = None) -> torch.Tensor:
    """scores [B, V] fp32, seen [B, T] ids so far -> processed scores (same shape). banned: ids removed this step
    (eos while fewer than min_new_tokens are generated). padding [B, T]: seen's left padding, which the repetition
    penalty skips (the n-grams read it, as transformers' do)."""
    if repetition_penalty_ is not None and repetition_penalty_ != 1.0:
        scores = repetition_penalty(scores, seen, repetition_penalty_, padding)
    if no_repeat_ngram_size:
        scores = no_repeat_ngram(scores, seen, no_repeat_ngram_size)
    if banned is not None and banned.numel():
        scores = scores.index_fill(-1, banned, NEG_INF)
    if not do_sample:
        return scores
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        scores = top_k_filter(scores, top_k)
    if top_p is not None and top_p < 1.0:
        scores = top_p_filter(scores, top_p)
    if min_p:
        scores = min_p_filter(scores, min_p)
    return scores


def choose(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, V] -> next ids [B]: argmax, or one draw from softmax(scores)."""
    if not do_sample:
        return scores.argmax(-1)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
