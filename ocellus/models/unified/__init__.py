"""Unified models: one transformer that both describes and draws images.

    emu3.py   Emu3 (Wang et al. 2024): one decoder over text + VQ tokens, image layout in-sequence
    janus.py  Janus (Wu et al. 2024): a ViT for understanding, the VQ tokenizer for generation, one decoder
    showo.py  Show-o (Xie et al. 2024): omni-attention (causal text, full image), discrete diffusion on codes
    seed_llama.py  SEED-LLaMA (Ge et al. 2023): SEED's 1-D semantic codes as words between [IMG] markers

Shared here: the vocabulary layout of text + image tokens (`UnifiedVocab`), the word-level text
vocabulary of the tiny shapes captions (`WordVocab`), one sampling step with classifier-free
guidance and an allowed-token constraint (`pick`), and what the models whose images are words of one
decoder (Emu3, SEED-LLaMA) decode with: `pair_sequence`, `cached_decode`, `guided_image_ids`,
`caption_after`. The KV-cached loop itself is the generation engine's (infer/generate.py
`decode_steps`): these, and Janus' code generation, plug their token choice (guidance, constraint) into
it as its `choose_token` hook (`engine_decode`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.infer.generate import GenerationConfig, decode_steps, prepare_prompt
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


def pair_sequence(text: list[int], image: list[int], task: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of one caption-image pair: 't2i' = <bos> text image <eos>, 'i2t' = <bos> image text <eos>;
    every token after <bos> is a target (the collate pads)."""
    if task == "t2i":
        ids = [BOS] + text + image + [EOS]
    elif task == "i2t":
        ids = [BOS] + image + text + [EOS]
    else:
        raise InputError(f"task must be 't2i' or 'i2t', got {task!r}")
    return ids, [-100] + ids[1:]


@torch.no_grad()
def engine_decode(model, ids: torch.Tensor, mask: torch.Tensor | None, steps: int, choose_fn,
                  **prefill) -> torch.Tensor:
    """Left-padded prompts ids / mask [R, T] through the generation engine's KV-cached loop (infer/generate.py
    decode_steps, no eos: every row runs `steps` tokens); choose_fn(step, logits [R, V]) -> ids [R] for
    every row (rows may be cond/uncond pairs that must receive the same token) -> ids [R, steps].
    prefill: model inputs of the first step only (pixel_values)."""
    prompt = prepare_prompt(model, ids, mask, steps)
    cfg = GenerationConfig(max_new_tokens=steps, eos_token_id=())
    return torch.stack(list(decode_steps(model, prompt, cfg, choose_token=choose_fn, **prefill)), 1)   # [R, steps]


@torch.no_grad()
def cached_decode(decoder, rows: list[list[int]], steps: int, choose_fn) -> torch.Tensor:
    """engine_decode of token lists (left-padded here) -> ids [R, steps]."""
    return engine_decode(decoder, *left_pad(rows), steps, choose_fn)


@torch.no_grad()
def guided_image_ids(decoder, text: WordVocab, captions: list[str], image_prefix: list[int], steps: int,
                     allowed_at, guidance_scale: float = 3.0, negative: str = "", constrained: bool = True,
                     temperature: float = 1.0, top_k: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """`steps` image-side ids [B, steps] after `<bos> caption image_prefix` for each caption, with
    classifier-free guidance: rows 0..B-1 are conditional, B..2B-1 the unconditional (or negative) prompt
    `<bos> [negative] image_prefix`, and both halves receive the guided token (guidance_scale 1 skips
    them). constrained: allowed_at(step) -> [V] bool limits each step (the layout of the image)."""
    B = len(captions)
    rows = [[BOS] + text.encode(c) + image_prefix for c in captions]
    if guidance_scale != 1.0:
        rows += [[BOS] + (text.encode(negative) if negative else []) + image_prefix] * B

    def choose_fn(step, logits):
        cond, uncond = (logits[:B], logits[B:]) if guidance_scale != 1.0 else (logits, None)
        allowed = allowed_at(step) if constrained else None
        nxt = pick(cond, uncond, guidance_scale, allowed, temperature, top_k, generator)   # [B]
        return nxt.repeat(len(rows) // B)                                              # the same token for both halves
    return cached_decode(decoder, rows, steps, choose_fn)[:B]


@torch.no_grad()
def caption_after(decoder, text: WordVocab, prompts: list[list[int]], max_new_tokens: int = 8) -> list[str]:
    """Greedy captions after each prompt (`<bos> image`): only text words or <eos> may come."""
    allowed = torch.zeros(decoder.config.vocab_size, dtype=torch.bool)
    allowed[EOS:len(text)] = True
    out = cached_decode(decoder, prompts, max_new_tokens, lambda s, logits: pick(logits, allowed=allowed, temperature=0))
    return [text.decode(r) for r in out.tolist()]
