"""Emu3: one decoder-only transformer over text and VQ image tokens, next-token prediction is all you need.

Wang et al. 2024, "Emu3: Next-Token Prediction is All You Need" (reference: baaivision/Emu3,
`Emu3Processor` and `Emu3PrefixConstrainedLogitsProcessor`). An image is written into the token
stream with its layout (sec. 2.2):

    <boi> <size h> <size w> c11 .. c1w <eol> c21 .. c2w <eol> ... ch1 .. chw <eol> <eoi>

(the reference writes the size as the text "h*w" between <|image start|> and <|image token|>; here
one token per side length). Understanding is "[image] caption", generation "caption [image]", both
trained by next-token prediction with the loss on vision-side targets weighted by `vision_weight`
(the paper's 0.5: image tokens outnumber text ones, and the weight keeps text from drowning).

Generation (sec. 2.4) uses classifier-free guidance against an unconditional (or negative) prompt
and, because the layout is in the sequence, constrained decoding: at body step j with the header
fixed to h x w, the only allowed token is <eol> at the end of each row, <eoi> after the last row,
and a code everywhere else (the reference's prefix-constrained logits processor), so every sampled
image is well-formed however undertrained the model is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.models.generative.vq import VQVAE
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.unified import (BOS, UnifiedVocab, WithImageTokenizer, WordVocab, cached_decode,
                                    caption_after, guided_image_ids, pair_sequence)
from ocellus.nn.rope import RopeConfig


@dataclass
class UnifiedOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


def weighted_next_token_loss(logits: torch.Tensor, labels: torch.Tensor, vision: torch.Tensor,
                             vision_weight: float) -> torch.Tensor:
    """sum_t w_t CE_t / sum_t w_t over next-token targets labels[:, 1:] (-100 untrained), w = vision_weight
    where `vision` [B, T] marks a vision-side target, else 1."""
    if labels.shape != logits.shape[:2] or vision.shape != labels.shape:
        raise InputError(f"labels {tuple(labels.shape)} / vision {tuple(vision.shape)} do not match logits "
                         f"{tuple(logits.shape[:2])}")
    target, vis = labels[:, 1:], vision[:, 1:]                                        # [B, T-1]
    ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=-100,
                         reduction="none").view_as(target)                           # [B, T-1]
    w = torch.where(vis, vision_weight, 1.0) * (target != -100)
    if not w.sum() > 0:
        raise InputError("no trained target in the batch (every label is -100, or all targets weigh 0)")
    return (ce * w).sum() / w.sum()


def decoder_config(vocab_size: int, max_len: int, dim: int = 128, num_layers: int = 4,
                   num_heads: int = 4) -> DecoderConfig:
    """A Llama-style decoder for a unified vocabulary (untied head: codes and words read out differently)."""
    head_dim = dim // num_heads
    return DecoderConfig(vocab_size=vocab_size, hidden_size=dim, intermediate_size=4 * dim,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         head_dim=head_dim,
                         rope=RopeConfig(head_dim=head_dim, max_position_embeddings=max_len),
                         max_position_embeddings=max_len)


class Emu3(WithImageTokenizer):
    """decoder: a DecoderLM over vocab.size ids; tokenizer: the frozen VQ-VAE whose codes are the image words."""

    def __init__(self, decoder: DecoderLM, tokenizer: VQVAE, vocab: UnifiedVocab, text: WordVocab,
                 vision_weight: float = 0.5, grid: int | None = None):
        super().__init__(tokenizer)
        if decoder.config.vocab_size != vocab.size or tokenizer.cfg.num_codes != vocab.num_codes:
            raise InputError(f"decoder vocab {decoder.config.vocab_size} / tokenizer codes {tokenizer.cfg.num_codes} "
                             f"do not match the unified vocabulary ({vocab.size} ids, {vocab.num_codes} codes)")
        if vocab.text_size != len(text):
            raise InputError(f"text vocabulary has {len(text)} words, the unified layout expects {vocab.text_size}")
        self.decoder = decoder
        self.vocab, self.text, self.vision_weight = vocab, text, vision_weight
        self.grid = grid   # the default h = w of generated images (the tokenizer's grid at the trained size)

    def parts(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer, "llm": self.decoder}

    # -- the image layout --------------------------------------------------------------------------

    def header(self, h: int, w: int) -> list[int]:
        v = self.vocab
        return [v.boi, v.size_token(h), v.size_token(w)]

    def image_ids(self, codes: torch.Tensor) -> list[int]:
        """codes [h, w] -> <boi> <h> <w> rows with <eol> <eoi>."""
        h, w = codes.shape
        rows = torch.cat([codes + self.vocab.code_base, codes.new_full((h, 1), self.vocab.eol)], 1)  # [h, w+1]
        return self.header(h, w) + rows.flatten().tolist() + [self.vocab.eoi]

    def allowed_at(self, step: int, h: int, w: int) -> torch.Tensor:
        """The constraint: which ids may come at body step `step` (0-based, after the header) -> [V] bool."""
        v, allowed = self.vocab, torch.zeros(self.vocab.size, dtype=torch.bool)
        row, col = divmod(step, w + 1)
        if row == h and col == 0:
            allowed[v.eoi] = True
        elif row < h and col == w:
            allowed[v.eol] = True
        elif row < h:
            allowed[v.code_base:] = True
        else:
            raise InputError(f"body step {step} is past the end of a {h}x{w} image ({h * (w + 1) + 1} tokens)")
        return allowed

    def parse_body(self, body: list[int], h: int, w: int) -> torch.Tensor:
        """The h*(w+1)+1 ids after a header -> codes [h, w]; InputError naming the first misplaced token."""
        v = self.vocab
        if len(body) < h * (w + 1) + 1:
            raise InputError(f"image body has {len(body)} tokens, a {h}x{w} image needs {h * (w + 1) + 1}")
        for j, t in enumerate(body[:h * (w + 1) + 1]):
            if not self.allowed_at(j, h, w)[t]:
                row, col = divmod(j, w + 1)
                raise InputError(f"malformed image: token {t} at row {row}, column {col} (expected "
                                 f"{'<eoi>' if row == h else '<eol>' if col == w else 'a code'})")
        rows = torch.tensor(body[:h * (w + 1)]).view(h, w + 1)                      # [h, w+1]
        return rows[:, :w] - v.code_base

    # -- training sequences -----------------------------------------------------------------------
    def sequence(self, caption: str, codes: torch.Tensor, task: str,
                 uncond: bool = False) -> tuple[list[int], list[int]]:
        """(ids, labels) for task 't2i' (caption, then image; uncond drops the caption: the unconditional
        prompt of CFG) or 'i2t' (image, then caption). Labels train everything after <bos> in both
        directions (Emu3 trains every token); the collate pads."""
        return pair_sequence([] if uncond else self.text.encode(caption), self.image_ids(codes), task)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                **kw) -> UnifiedOutput:
        """pixel_values are accepted and unused: the images are already in input_ids as codes."""
        logits = self.decoder(input_ids=input_ids, attention_mask=attention_mask, **kw).logits
        loss = None
        if labels is not None:
            loss = weighted_next_token_loss(logits, labels, self.vocab.is_vision(labels), self.vision_weight)
        return UnifiedOutput(loss, logits)

    # -- inference ---------------------------------------------------------------------------------
    def _decode(self, rows: list[list[int]], steps: int, choose_fn) -> torch.Tensor:
        return cached_decode(self.decoder, rows, steps, choose_fn)

    @torch.no_grad()
    def generate_image_ids(self, captions: list[str], h: int, w: int, guidance_scale: float = 3.0,
                           negative: str = "", constrained: bool = True, temperature: float = 1.0,
                           top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Body ids [B, h*(w+1)+1] for each caption. Rows 0..B-1 are conditional, B..2B-1 the unconditional
        (negative) prompt; guidance_scale 1 skips them."""
        return guided_image_ids(self.decoder, self.text, captions, self.header(h, w), h * (w + 1) + 1,
                                lambda step: self.allowed_at(step, h, w), guidance_scale, negative, constrained,
                                temperature, top_k, generator)

    @torch.no_grad()
    def generate_images(self, captions: list[str], h: int | None = None, w: int | None = None, **kw) -> torch.Tensor:
        """Captions -> images [B, C, H, W] in [-1, 1] (constrained decoding, so every body parses)."""
        h, w = h or self.grid, w or self.grid
        if h is None or w is None:
            raise InputError("give the image grid h, w (this model has no default grid)")
        body = self.generate_image_ids(captions, h, w, **kw)
        codes = torch.stack([self.parse_body(b.tolist(), h, w) for b in body])        # [B, h, w]
        return self.tokenizer.decode_ids(codes).clamp(-1, 1)

    @torch.no_grad()
    def describe(self, pixel_values: torch.Tensor, max_new_tokens: int = 8) -> list[str]:
        """Images -> captions: greedy over text words only (the image is given; text must follow)."""
        return caption_after(self.decoder, self.text, [[BOS] + self.image_ids(c) for c in self.codes(pixel_values)],
                             max_new_tokens)
