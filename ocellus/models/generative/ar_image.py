"""Autoregressive image generation over VQ tokens with a class prefix (Taming Transformers).

Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis" (sec. 3.2,
reference: CompVis/taming-transformers `Net2NetTransformer`): a decoder-only transformer models
p(s) = prod_i p(s_i | s_<i, c) over the raster-order code ids s of a VQ tokenizer, with the
condition c as a prefix token; sampling draws one token at a time with top-k. The transformer is
this project's Llama-style DecoderLM (vocabulary = codes + one token per class), so generation is
the ordinary engine of ocellus/infer/generate.py with its KV cache; class tokens are never a valid
next token, so their logits are set to -inf.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.models.generative.vq import VQVAE
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.rope import RopeConfig
from ocellus.infer.generate import generate


@dataclass
class LossOutput:
    loss: torch.Tensor


@dataclass
class ARLogits:
    logits: torch.Tensor


def ar_decoder_config(num_codes: int, num_classes: int, grid: int, dim: int = 128, num_layers: int = 4,
                      num_heads: int = 4) -> DecoderConfig:
    head_dim = dim // num_heads
    return DecoderConfig(vocab_size=num_codes + num_classes, hidden_size=dim, intermediate_size=4 * dim,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         head_dim=head_dim, rope=RopeConfig(head_dim=head_dim, max_position_embeddings=grid * grid + 1),
                         max_position_embeddings=grid * grid + 1)


class ARImage(nn.Module):
    """Class token (id num_codes + c) followed by the grid*grid code ids, next-token loss on the codes."""

    def __init__(self, decoder: DecoderLM, tokenizer: VQVAE, num_classes: int, grid: int):
        super().__init__()
        self.decoder, self.tokenizer = decoder, tokenizer.eval().requires_grad_(False)
        self.num_codes, self.num_classes, self.grid = tokenizer.cfg.num_codes, num_classes, grid
        self.config = decoder.config      # eos/pad for the generation engine (none: fixed length)

    def parts(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer, "transformer": self.decoder}

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()
        return self

    # the generation engine's interface -----------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int):
        return self.decoder.new_cache(batch_size, max_len)

    @property
    def max_context(self) -> int:
        return self.decoder.max_context

    def forward(self, input_ids=None, pixel_values=None, labels=None, **kw):
        if pixel_values is not None:      # training: images + class labels -> loss
            return self._loss(pixel_values, labels)
        logits = self.decoder(input_ids=input_ids, **kw).logits
        logits[..., self.num_codes:] = float("-inf")                                  # only codes come next
        return ARLogits(logits)

    def _loss(self, pixel_values, labels) -> LossOutput:
        labels = self.check_labels(labels)
        with torch.no_grad():
            codes = self.tokenizer.encode_to_ids(pixel_values).flatten(1)              # [B, N]
        if codes.shape[1] != self.grid ** 2:
            raise InputError(f"images tokenize to {codes.shape[1]} tokens; this model was built for {self.grid ** 2}")
        seq = torch.cat([self.num_codes + labels[:, None], codes], dim=1)             # [B, 1+N]
        logits = self.decoder(input_ids=seq[:, :-1]).logits                           # [B, N, V]
        return LossOutput(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1)))

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if labels is None or labels.dim() != 1 or ((labels < 0) | (labels >= self.num_classes)).any():
            raise InputError(f"class labels must be [B] ints in 0..{self.num_classes - 1}, "
                             f"got {None if labels is None else labels.tolist()}")
        return labels

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, top_k: int | None = 32, temperature: float = 1.0,
                 seed: int | None = None) -> torch.Tensor:
        prompt = self.num_codes + self.check_labels(labels)[:, None]                  # [B, 1]
        out = generate(self, prompt, max_new_tokens=self.grid ** 2, do_sample=temperature > 0,
                       temperature=temperature, top_k=top_k, seed=seed, eos_token_id=(), pad_token_id=None)
        codes = out[:, 1:].view(-1, self.grid, self.grid)                             # [B, g, g]
        return self.tokenizer.decode_ids(codes).clamp(-1, 1)
