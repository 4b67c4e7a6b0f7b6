"""Chunked prefill: a prompt's keys/values computed a chunk at a time, between decode steps.

A prompt prefilled in one forward holds every running stream for the whole prefill: on this project's CPU a
2k-token prompt on the 100M Llama takes seconds, and every stream being decoded gets no token meanwhile.
Sarathi-Serve (Agrawal et al. 2024, "Taming throughput-latency tradeoff in LLM inference with
Sarathi-Serve") and vLLM's chunked prefill split the prompt into chunks under a token budget per engine
step, so the running rows decode one token between two chunks: their time per token grows by one chunk's
cost instead of stalling for the whole prompt.

Chunk j is an ordinary cached forward over the prompt's own batch-1 `StaticKVCache`:

    ids[:, a:b]  with position_ids a .. b-1, the cache already holding the a tokens before it

The mask builder (nn/masks.py) places query i at absolute position a + i, so it sees keys 0 .. a + i: the
last chunk's logits and the cache's keys/values equal one forward over the whole prompt (up to float
summation order; tests/serve/test_chunked_prefill.py).

Unlike Sarathi-Serve the chunk runs as its own forward, not fused into the decode batch's forward: the slot
cache's rows all write at one shared column (infer/slot_cache.py), where a chunk's tokens would need a
ragged batch. The price is reading the weights twice in a step that has a chunk.

A prompt with extra prefill inputs (pixel_values: image features are spliced at the placeholder positions,
counted over the whole prompt, models/fusion.py) cannot be split and runs as one chunk.
"""
from __future__ import annotations

import torch

from ocellus.errors import InputError


class ChunkedPrefill:
    """One prompt's prefill, run chunk by chunk. input_ids [1, T]; extra: further model inputs of the
    prefill (pixel_values, ...). After the last chunk `logits` holds the last position's [1, V] fp32 (on
    the CPU) and `cache` the prompt's keys/values, ready for `SlotKVCache.insert`."""

    def __init__(self, model, input_ids: torch.Tensor, extra: dict | None = None, device=None):
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
            raise InputError(f"a prefill takes one prompt of >= 1 token, input_ids [1, T]; got "
                             f"{tuple(input_ids.shape)}")
        self.model = model
        self.device = device if device is not None else input_ids.device
        self.ids = input_ids.to(self.device)
        self.extra = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in (extra or {}).items()}
        self.total = int(input_ids.shape[1])
        self.cache = model.new_cache(1, self.total)
        self.done = 0                         # prompt tokens already in the cache
        self.logits: torch.Tensor | None = None

    @property
    def remaining(self) -> int:
        return self.total - self.done

    @property
    def finished(self) -> bool:
        return self.done == self.total

    @property
    def splittable(self) -> bool:
        return not self.extra

    def next_chunk(self, budget: int | None) -> int:
        """Tokens the next chunk takes with `budget` tokens left in this step (None: no budget). A prompt
        with images is one chunk, whatever the budget."""
        if budget is None or not self.splittable:
            return self.remaining
        return max(0, min(budget, self.remaining))

    def run(self, n: int) -> None:
        """Prefill the next n prompt tokens."""
        if not 1 <= n <= self.remaining or (n != self.remaining and not self.splittable):
            raise InputError(f"a chunk of {n} tokens: {self.remaining} of this prompt's {self.total} are left"
                             + ("" if self.splittable else ", and a prompt with images is prefilled in one chunk"))
        a, b = self.done, self.done + n
        pos = torch.arange(a, b, device=self.device)[None]                                      # [1, n]
        out = self.model(input_ids=self.ids[:, a:b], position_ids=pos, cache=self.cache, logits_to_keep=1,
                         **self.extra)
        self.done = b
        if self.finished:
            self.logits = out.logits[:, -1].float().cpu()                                       # [1, V]
