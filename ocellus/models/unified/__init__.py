"""Unified models: one transformer that both describes and draws images.

    emu3.py   Emu3 (Wang et al. 2024): one decoder over text + VQ tokens, image layout in-sequence
    janus.py  Janus (Wu et al. 2024): a ViT for understanding, the VQ tokenizer for generation, one decoder
    showo.py  Show-o (Xie et al. 2024): omni-attention (causal text, full image), discrete diffusion on codes

Shared here: the vocabulary layout of text + image tokens (`UnifiedVocab`), the word-level text
vocabulary of the tiny shapes captions (`WordVocab`), and one sampling step with classifier-free
guidance and an allowed-token constraint (`pick`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.infer.sampling import choose, top_k_filter
from ocellus.models.generative.guidance import check_guidance_scale, guide_scale

PAD, BOS, EOS = 0, 1, 2


class WordVocab:
    """A word-level text vocabulary: ids 0/1/2 are <pad>/<bos>/<eos>, then the words in order.
    The tiny unified models caption single shapes ("red circle"): a BPE would only add noise."""

    def __init__(self, words: list[str]):
        if len(set(words)) != len(words) or any(not w or " " in w for w in words):
            raise ConfigError(f"vocabulary words must be distinct and non-empty without spaces, got {words}")
        self.words = ["<pad>", "<bos>", "<eos>", *words]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        unknown = [w for w in text.split() if w not in self.index or self.index[w] <= EOS]
        if unknown:
            raise InputError(f"words {unknown} in {text!r} are not in the vocabulary {self.words[3:]}")
        return [self.index[w] for w in text.split()]

    def decode(self, ids) -> str:
        out = []
        for i in (int(t) for t in ids):
            if i == EOS:
                break
            if EOS < i < len(self.words):
                out.append(self.words[i])
        return " ".join(out)


@dataclass(frozen=True)
class UnifiedVocab:
    """One id space for text and images: [text | <boi> <eoi> <eol> <mask> | size 1..max_grid | codes].

    Emu3 writes an image as <boi> <size h> <size w> (h rows of w codes, each row closed by <eol>) <eoi>;
    Show-o uses <mask> for its discrete diffusion; the size tokens are Emu3's "H*W" header."""
    text_size: int
    num_codes: int
    max_grid: int = 16

    @property
    def boi(self) -> int:
        return self.text_size

    @property
    def eoi(self) -> int:
        return self.text_size + 1

    @property
    def eol(self) -> int:
        return self.text_size + 2

    @property
    def mask(self) -> int:
        return self.text_size + 3

    def size_token(self, n: int) -> int:
        if not 1 <= n <= self.max_grid:
            raise InputError(f"image grid side {n} is outside 1..{self.max_grid} (the size tokens this vocabulary has)")
        return self.text_size + 4 + n - 1

    @property
    def code_base(self) -> int:
        return self.text_size + 4 + self.max_grid

    @property
    def size(self) -> int:
        return self.code_base + self.num_codes

    def is_vision(self, ids: torch.Tensor) -> torch.Tensor:
        """True for every image-side id (markers, size header, codes)."""
        return ids >= self.boi

    def is_code(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.code_base


class WithImageTokenizer(nn.Module):
    """What the unified models share about their VQ tokenizer: it is frozen and stays in eval mode (its
    quantizer must not update EMA / restart statistics), and `codes` turns images into its ids."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def codes(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] in [-1, 1] -> code ids [B, h, w]."""
        return self.tokenizer.encode_to_ids(pixel_values)


def left_pad(rows: list[list[int]], pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ids [B, T] left-padded + attention_mask [B, T] (generation prompts)."""
    T = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding -> position ids: cumsum(mask) - 1, pads at 0 (what transformers' generate does)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pick(cond: torch.Tensor, uncond: torch.Tensor | None = None, scale: float = 1.0,
         allowed: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits [B, V]: classifier-free guidance uncond + s (cond - uncond) when
    uncond is given, then the constraint (allowed [V] or [B, V] bool; the rest -inf), then greedy
    (temperature 0) or top-k sampling."""
    logits = cond.float()
    if uncond is not None:
        logits = guide_scale(logits, uncond.float(), check_guidance_scale(scale))
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    return choose(logits, True, generator)
