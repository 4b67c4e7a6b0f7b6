"""Janus: decoupled visual encoding for unified understanding and generation.

Wu et al. 2024, "Janus: Decoupling Visual Encoding for Unified Multimodal Understanding and
Generation" (reference: deepseek-ai/Janus, `MultiModalityCausalLM` and `generation_inference.py`).
One shared decoder, two visual paths (sec. 3.1):

    understanding  image -> ViT (semantic features) -> und_aligner (MLP) -> written at <image> slots
    generation     VQ code ids -> gen_embed -> gen_aligner (MLP) -> input embeddings;
                   decoder hidden state -> gen_head (MLP) -> next code logits (not the text lm_head)

Sequences: understanding `<bos> <boi> <image>*P <eoi> caption <eos>` (text loss), generation
`<bos> caption <boi> code_1 .. code_N` (code loss from gen_head). Code slots carry their code in the
id as gen_base + code, so a training row is one id list like any other.

Training (sec. 3.2) runs in three stages, each a `parts()` stage: I adaptors + image head (decoder and
encoders frozen), II unified pretraining (decoder too), III SFT (the understanding encoder too); the
VQ tokenizer stays frozen throughout. Generation (generation_inference.py) batches conditional and
unconditional prompts as interleaved rows (2i cond, 2i+1 uncond); the unconditional prompt is the
conditional one with every caption token replaced by <pad> - same length, same left padding and
attention mask, <bos> and <boi> kept - and logits are mixed by CFG at every code.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.models.fusion import splice
from ocellus.models.generative.vq import VQVAE
from ocellus.models.text.decoder import CausalLMOutput, DecoderLM
from ocellus.models.unified import BOS, EOS, PAD, WithImageTokenizer, WordVocab, engine_decode, left_pad, pick
from ocellus.models.unified.emu3 import UnifiedOutput, decoder_config
from ocellus.models.vision.vit import ViTConfig, VisionTransformer


def aligner(d_in: int, d_out: int) -> nn.Sequential:
    """Janus' MlpProjector (depth 2): Linear -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class Janus(WithImageTokenizer):
    def __init__(self, decoder: DecoderLM, vision: VisionTransformer, tokenizer: VQVAE, text: WordVocab,
                 gen_embed_dim: int = 32, grid: int | None = None):
        super().__init__(tokenizer)
        D, T = decoder.config.hidden_size, len(text)
        self.boi, self.eoi, self.image_token, self.gen_base = T, T + 1, T + 2, T + 3
        if decoder.config.vocab_size != self.gen_base:
            raise InputError(f"Janus' decoder vocabulary must be text + <boi> <eoi> <image> = {self.gen_base}, "
                             f"got {decoder.config.vocab_size}")
        self.decoder, self.vision, self.text, self.grid = decoder, vision, text, grid
        self.num_codes = tokenizer.cfg.num_codes
        self.und_aligner = aligner(vision.config.hidden_size, D)
        self.gen_embed = nn.Embedding(self.num_codes, gen_embed_dim)
        self.gen_aligner = aligner(gen_embed_dim, D)
        self.gen_head = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, self.num_codes))
        P = (vision.config.image_size // vision.config.patch_size) ** 2
        self.tokens_per_image = P

    def parts(self) -> dict[str, nn.Module]:
        return {"vision": self.vision, "tokenizer": self.tokenizer, "und_adaptor": self.und_aligner,
                "gen_adaptor": nn.ModuleList([self.gen_embed, self.gen_aligner, self.gen_head]), "llm": self.decoder}


    # -- sequences ----------------------------------------------------------------------------------
    def sequence(self, caption: str, codes: torch.Tensor, task: str,
                 uncond: bool = False) -> tuple[list[int], list[int]]:
        """(ids, labels); uncond: the caption's words become <pad> (what unconditional_prompt does at inference)."""
        text = self.text.encode(caption)
        text = [PAD] * len(text) if uncond else text
        if task == "t2i":
            ids = [BOS] + text + [self.boi] + (codes.flatten() + self.gen_base).tolist()
            return ids, [-100] * (len(ids) - codes.numel()) + ids[-codes.numel():]    # loss on the codes only
        if task == "i2t":
            prompt = [BOS, self.boi] + [self.image_token] * self.tokens_per_image + [self.eoi]
            return prompt + text + [EOS], [-100] * len(prompt) + text + [EOS]         # loss on the caption only
        raise InputError(f"task must be 't2i' or 'i2t', got {task!r}")

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """ids [B, T] -> [B, T, D]: words by embed_tokens, <image> slots by the ViT + und_aligner (the
        rows of pixel_values that hold <image> slots, in order), code slots by gen_embed + gen_aligner."""
        is_gen = input_ids >= self.gen_base
        x = self.decoder.embed_tokens(input_ids.masked_fill(is_gen, PAD))              # [B, T, D]
        if is_gen.any():
            gen = self.gen_aligner(self.gen_embed(input_ids[is_gen] - self.gen_base))  # [n, D]
            x = x.masked_scatter(is_gen[..., None], gen.to(x.dtype))
        has_image = (input_ids == self.image_token).any(1)                            # [B]
        if has_image.any():
            if pixel_values is None or len(pixel_values) != len(input_ids):
                raise InputError("input_ids hold <image> slots: pass pixel_values, one image per row")
            feats = self.und_aligner(self.vision.features(pixel_values[has_image], layer=-1))   # [N, P, D]
            x = splice(x, input_ids, self.image_token, feats.flatten(0, 1), [feats.shape[1]] * len(feats))
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None, **kw) -> UnifiedOutput:
        out = self.decoder(inputs_embeds=self.embed(input_ids, pixel_values), attention_mask=attention_mask, **kw)
        loss = None
        if labels is not None:
            target, h = labels[:, 1:], out.hidden_states[:, :-1]                      # next-token targets
            is_code, is_text = target >= self.gen_base, (target != -100) & (target < self.gen_base)
            loss = out.logits.new_zeros(())
            if is_text.any():
                loss = loss + F.cross_entropy(out.logits[:, :-1][is_text].float(), target[is_text])
            if is_code.any():
                loss = loss + F.cross_entropy(self.gen_head(h[is_code]).float(), target[is_code] - self.gen_base)
        return UnifiedOutput(loss, out.logits)

    # -- generation ------------------------------------------------------------------------------------
    def unconditional_prompt(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The CFG partner of left-padded conditional prompts [B, T] (<bos> caption <boi>): every real
        caption token -> <pad>; <bos>, <boi> and the left padding (and so the mask) unchanged."""
        keep = (attention_mask == 0) | (ids == BOS) | (ids == self.boi)
        return torch.where(keep, ids, torch.full_like(ids, PAD))

    def cfg_prompts(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Interleaved rows [2B, T]: row 2i = caption i's left-padded prompt, row 2i+1 its unconditional partner."""
        cond, mask = left_pad([[BOS] + self.text.encode(c) + [self.boi] for c in captions])
        ids = torch.stack([cond, self.unconditional_prompt(cond, mask)], 1).flatten(0, 1)   # [2B, T]
        return ids, mask.repeat_interleave(2, 0)                                       # [2B, T]

    @torch.no_grad()
    def generate_images(self, captions: list[str], guidance_scale: float = 3.0, temperature: float = 1.0,
                        top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.grid is None:
            raise InputError("this Janus model has no image grid set")
        B, N = len(captions), self.grid * self.grid
        ids, mask = self.cfg_prompts(captions)

        def choose(step, logits):                                                      # [2B, K]
            code = pick(logits[0::2], logits[1::2], guidance_scale, None, temperature, top_k, generator)  # [B]
            return (code + self.gen_base).repeat_interleave(2)                         # both rows of a pair
        out = engine_decode(EngineView(self, self.gen_head), ids, mask, N, choose)[0::2] - self.gen_base  # [B, N]
        codes = out.view(B, self.grid, self.grid)                                     # [B, g, g]
        return self.tokenizer.decode_ids(codes).clamp(-1, 1)

    @torch.no_grad()
    def describe(self, pixel_values: torch.Tensor, max_new_tokens: int = 8) -> list[str]:
        B = len(pixel_values)
        row = [BOS, self.boi] + [self.image_token] * self.tokens_per_image + [self.eoi]
        allowed = torch.zeros(self.gen_base, dtype=torch.bool)
        allowed[EOS:len(self.text)] = True
        out = engine_decode(EngineView(self, self.decoder.lm_head), torch.tensor([row] * B), None, max_new_tokens,
                            lambda step, logits: pick(logits, allowed=allowed, temperature=0), pixel_values=pixel_values)
        return [self.text.decode(r) for r in out.tolist()]


class EngineView(nn.Module):
    """Janus in the generation engine's model form (infer/generate.py): every id - words, <image> slots
    (pixel_values at prefill), codes as gen_base + code - embedded by Janus.embed; the logits [B, 1, V]
    from `head` (gen_head over the codebook to draw, the decoder's lm_head over words to describe)."""

    def __init__(self, janus: "Janus", head: nn.Module):
        super().__init__()
        self.janus, self.head = janus, head
        self.config = janus.decoder.config
        self.max_context = janus.decoder.max_context

    def new_cache(self, batch: int, max_len: int):
        return self.janus.decoder.new_cache(batch, max_len)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep: int = 1,
                pixel_values=None):
        j = self.janus
        h = j.decoder(inputs_embeds=j.embed(input_ids, pixel_values), attention_mask=attention_mask,
                      position_ids=position_ids, cache=cache, logits_to_keep=1).hidden_states[:, -1:]   # [B, 1, D]
        return CausalLMOutput(logits=self.head(h))


def build_janus(spec: dict, tokenizer: VQVAE, text: WordVocab, image_size: int) -> Janus:
    """spec: dim, num_layers, num_heads (decoder); vit_dim, vit_layers, vit_patch (understanding encoder);
    gen_embed_dim."""
    known = {"dim", "num_layers", "num_heads", "vit_dim", "vit_layers", "vit_patch", "gen_embed_dim"}
    if set(spec) - known:
        raise ConfigError(f"unknown Janus model keys {sorted(set(spec) - known)}; known {sorted(known)}")
    grid = image_size // tokenizer.cfg.downsample_factor
    patch, vd = int(spec.get("vit_patch", 4)), int(spec.get("vit_dim", 64))
    vit = VisionTransformer(ViTConfig(image_size=image_size, patch_size=patch, hidden_size=vd, intermediate_size=4 * vd,
                                      num_layers=int(spec.get("vit_layers", 2)), num_heads=max(1, vd // 32)))
    P = (image_size // patch) ** 2
    dec = DecoderLM(decoder_config(len(text) + 3, P + grid * grid + 24, int(spec.get("dim", 128)),
                                   int(spec.get("num_layers", 4)), int(spec.get("num_heads", 4))))
    return Janus(dec, vit, tokenizer, text, int(spec.get("gen_embed_dim", 32)), grid)
