"""What the generation engine (infer/generate.py) needs from a model that wraps a decoder.

A vision-language model answers through its `language_model` (a DecoderLM): the KV cache, the
context length and `generate` are the decoder's, and only the prefill differs (images go in).
Models that cache more (Flamingo's media keys, Qwen2-VL's rope deltas) override `new_cache`;
models that cannot beam-search their prompts refuse in `check_generate`.
"""
from __future__ import annotations

from torch import nn
from ocellus.infer.generate import generate


class GeneratesWithDecoder(nn.Module):
    language_model: nn.Module

    def attach_decoder(self, language_model: nn.Module, config=None) -> None:
        """The decoder this model answers through, and the config the engine reads eos / pad from (the
        decoder's unless given). A constructor calls it where it registered language_model before, after the
        vision parts, so the parameter order (optimizer state, checkpoints) stays the same."""
        self.language_model = language_model
        self.config = config if config is not None else language_model.config

    def new_cache(self, batch_size: int, max_len: int):
        return self.language_model.new_cache(batch_size, max_len)

    @property
    def max_context(self) -> int:
        return self.language_model.max_context

    def check_generate(self, input_ids, **kwargs) -> None:
        """Raise for generation settings this model cannot serve (default: none)."""

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        self.check_generate(input_ids, **kwargs)
        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)
