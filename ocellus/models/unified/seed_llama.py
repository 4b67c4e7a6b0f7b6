"""SEED-LLaMA: a decoder LM whose vocabulary is extended by SEED's discrete semantic image codes.

Ge et al. 2023, "Making LLaMA SEE and Draw with SEED Tokenizer" (reference: AILab-CVC/SEED,
`seed_llama` + `models/seed_llama_tokenizer.py`). The SEED tokenizer (seed.py; its trained codec
with the diffusion detokenizer lives next to it) turns an image into a 1-D *causal* sequence of
Q codes; SEED-LLaMA adds the codes to the LLM's vocabulary and writes an image into text as

    [IMG] c1 c2 ... cQ [/IMG]

(the reference spells the codes `<img_00000>`.. and the markers `<img>` / `</img>`). Training is plain
next-token prediction over multimodal sequences, every token after <bos> trained: caption -> image
("red circle [IMG] .. [/IMG]"), image -> caption ("[IMG] .. [/IMG] red circle") and, cheaply,
interleaved sequences of two (caption, image) pairs in a row. Because the codes are causal, an LLM
can write them left to right like words. Generation:

    text -> image   "<bos> caption [IMG]", then exactly Q code ids (constrained decoding: inside the
                    markers only codes may come) and [/IMG]; classifier-free guidance against the
                    unconditional prompt "<bos> [IMG]" (captions are dropped with p_uncond in training);
                    the codes -> the codec's diffusion detokenizer -> pixels.
    image -> text   "<bos> [IMG] codes [/IMG]", then greedy over text words.

The codec is anything with encode(pixel_values [B, 3, S, S] in [-1, 1]) -> codes [B, Q],
decode(codes [B, Q], guidance_scale=, steps=, seed=) -> images [B, 3, S, S] in [-1, 1], and
attributes num_codes / num_queries. Ids come from the shared `UnifiedVocab` (its <boi>/<eoi> are
[IMG]/[/IMG]; the <eol>/<mask>/size ids of Emu3/Show-o stay unused here).
"""
from __future__ import annotations

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.models.text.decoder import DecoderLM
from ocellus.models.unified import (BOS, EOS, UnifiedVocab, WithImageTokenizer, WordVocab, caption_after,
                                    guided_image_ids, pair_sequence)
from ocellus.models.unified.emu3 import decoder_config
from ocellus.models.unified.seed import check_codes


class SeedLlama(WithImageTokenizer):
    """decoder: a DecoderLM over vocab.size ids; codec: the frozen SEED codec whose codes are the image words."""

    def __init__(self, decoder: DecoderLM, codec: nn.Module, vocab: UnifiedVocab, text: WordVocab):
        super().__init__(codec)
        if decoder.config.vocab_size != vocab.size or codec.num_codes != vocab.num_codes:
            raise ConfigError(f"decoder vocab {decoder.config.vocab_size} / codec codes {codec.num_codes} do not "
                              f"match the unified vocabulary ({vocab.size} ids, {vocab.num_codes} codes)")
        if vocab.text_size != len(text):
            raise ConfigError(f"text vocabulary has {len(text)} words, the unified layout expects {vocab.text_size}")
        self.decoder, self.vocab, self.text = decoder, vocab, text
        self.num_queries = int(codec.num_queries)

    def parts(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer, "llm": self.decoder}

    @torch.no_grad()
    def codes(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] in [-1, 1] -> SEED code ids [B, Q]."""
        return self.tokenizer.encode(pixel_values)

    # -- the image in the token stream ---------------------------------------------------------------
    def image_ids(self, codes: torch.Tensor) -> list[int]:
        """codes [Q] -> [IMG] c1..cQ [/IMG] as ids; InputError for a wrong count or an id out of range."""
        if codes.dim() != 1:
            raise InputError(f"an image is a 1-D sequence of {self.num_queries} SEED codes, got shape "
                             f"{tuple(codes.shape)}")
        check_codes(codes[None], self.num_queries, self.vocab.num_codes)
        return [self.vocab.boi] + (codes + self.vocab.code_base).tolist() + [self.vocab.eoi]

    def allowed_at(self, step: int) -> torch.Tensor:
        """The constraint after [IMG]: steps 0..Q-1 only codes, step Q only [/IMG] -> [V] bool."""
        allowed = torch.zeros(self.vocab.size, dtype=torch.bool)
        if step < self.num_queries:
            allowed[self.vocab.code_base:] = True
        elif step == self.num_queries:
            allowed[self.vocab.eoi] = True
        else:
            raise InputError(f"step {step} is past [/IMG] (an image is {self.num_queries} codes + [/IMG])")
        return allowed

    def parse_body(self, body: list[int]) -> torch.Tensor:
        """The Q + 1 ids after [IMG] -> codes [Q]; InputError naming the first misplaced token."""
        Q = self.num_queries
        if len(body) < Q + 1:
            raise InputError(f"image body has {len(body)} tokens, an image needs {Q} codes + [/IMG]")
        for j, t in enumerate(body[:Q + 1]):
            if not self.allowed_at(j)[t]:
                raise InputError(f"malformed image: token {t} at position {j} (expected "
                                 f"{'[/IMG]' if j == Q else 'a code'})")
        return torch.tensor(body[:Q]) - self.vocab.code_base

    # -- training sequences --------------------------------------------------------------------------
    def sequence(self, caption: str, codes: torch.Tensor, task: str,
                 uncond: bool = False) -> tuple[list[int], list[int]]:
        """(ids, labels) for task 't2i' (caption [IMG]..[/IMG]; uncond drops the caption: the unconditional
        prompt of CFG) or 'i2t' ([IMG]..[/IMG] caption). Every token after <bos> is a target."""
        return pair_sequence([] if uncond else self.text.encode(caption), self.image_ids(codes), task)

    def interleaved(self, pairs: list[tuple[str, torch.Tensor]]) -> tuple[list[int], list[int]]:
        """(ids, labels) of several (caption, codes) pairs in a row: 'red circle [IMG]..[/IMG] blue square
        [IMG]..[/IMG]' (SEED-LLaMA's interleaved multimodal pretraining, two pairs per row here)."""
        ids = [BOS]
        for caption, codes in pairs:
            ids += self.text.encode(caption) + self.image_ids(codes)
        ids.append(EOS)
        return ids, [-100] + ids[1:]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None, **kw):
        """Plain next-token prediction (the decoder's loss). pixel_values are accepted and unused: the
        images are already in input_ids as codes."""
        return self.decoder(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kw)

    # -- inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_codes(self, captions: list[str], guidance_scale: float = 3.0, negative: str = "",
                       constrained: bool = True, temperature: float = 1.0, top_k: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Captions -> the Q + 1 ids after '[IMG]' [B, Q+1] (codes, then [/IMG] when constrained)."""
        return guided_image_ids(self.decoder, self.text, captions, [self.vocab.boi], self.num_queries + 1,
                                self.allowed_at, guidance_scale, negative, constrained, temperature, top_k, generator)

    @torch.no_grad()
    def generate_images(self, captions: list[str], detok_guidance: float | None = None,
                        detok_steps: int | None = None, generator: torch.Generator | None = None,
                        **kw) -> torch.Tensor:
        """Captions -> images [B, 3, S, S] in [-1, 1]: LLM-written codes through the codec's diffusion
        detokenizer (detok_guidance / detok_steps: its CFG scale and sampling steps; its defaults when None)."""
        body = self.generate_codes(captions, generator=generator, **kw)
        codes = torch.stack([self.parse_body(b) for b in body.tolist()])              # [B, Q]
        opts = {k: v for k, v in (("guidance_scale", detok_guidance), ("steps", detok_steps)) if v is not None}
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator)) if generator is not None else 0
        return self.tokenizer.decode(codes, seed=seed, **opts).clamp(-1, 1)

    @torch.no_grad()
    def describe(self, pixel_values: torch.Tensor, max_new_tokens: int = 8) -> list[str]:
        """Images -> captions: greedy over text words after '[IMG] codes [/IMG]'."""
        return caption_after(self.decoder, self.text, [[BOS] + self.image_ids(c) for c in self.codes(pixel_values)],
                             max_new_tokens)


def build_seed_llama(spec: dict, codec: nn.Module, text: WordVocab) -> SeedLlama:
    """spec: dim, num_layers, num_heads of the decoder; the context fits two (caption, image) pairs."""
    known = {"dim", "num_layers", "num_heads"}
    if set(spec) - known:
        raise ConfigError(f"unknown seed_llama model keys {sorted(set(spec) - known)}; known {sorted(known)}")
    for attr in ("encode", "decode", "num_codes", "num_queries"):
        if not hasattr(codec, attr):
            raise ConfigError(f"the SEED codec lacks {attr!r} (needs encode, decode, num_codes, num_queries)")
    vocab = UnifiedVocab(len(text), int(codec.num_codes), max_grid=1)
    cfg = decoder_config(vocab.size, 2 * (int(codec.num_queries) + 2) + 16, int(spec.get("dim", 128)),
                         int(spec.get("num_layers", 4)), int(spec.get("num_heads", 4)))
    return SeedLlama(DecoderLM(cfg), codec, vocab, text)
