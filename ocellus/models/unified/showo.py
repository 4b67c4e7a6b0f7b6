"""Show-o: one transformer that predicts text autoregressively and image tokens by discrete diffusion.

Xie et al. 2024, "Show-o: One Single Transformer to Unify Multimodal Understanding and Generation"
(reference: showlab/Show-o, `Showo`, `omni_attn_mask` / `create_attention_mask_*` in
training/prompting_utils.py). The vocabulary is text + image codes + a <mask> token (here the
shared `UnifiedVocab`); the transformer has QK-norm (RMSNorm on each head's queries and keys, which
the paper adds for stable mixed-modality training). The omni-attention mask (sec. 3.2) is

    causal over text; full (bidirectional) among the tokens of one image; every token sees the text
    and images before it; padding columns removed (no query attends a <pad>),

so one sequence can hold text then image then text. Training (sec. 3.3): mask-token prediction on
image tokens - a cosine-scheduled share of the codes replaced by <mask>, cross-entropy at the masked
positions (no shift) - plus next-token prediction on caption text, `L = w_mtp L_MTP + w_ntp L_NTP`;
captions are dropped (replaced by <pad>) with p_uncond for guidance. Generation is MaskGIT's
(models/generative/maskgit.py: cosine schedule, confidence-ranked re-masking with annealed Gumbel
noise) with the paper's guidance `(1 + w) l_cond - w l_uncond`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.models.generative.guidance import guide_weight
from ocellus.models.generative.maskgit import cosine_mask_ratio, masked_after_step
from ocellus.models.generative.vq import VQVAE
from ocellus.models.unified import BOS, EOS, PAD, UnifiedVocab, WithImageTokenizer, WordVocab, left_pad, pick
from ocellus.models.unified.emu3 import UnifiedOutput
from ocellus.nn.attention import attend
from ocellus.nn.mlp import SwiGLU
from ocellus.nn.norms import RMSNorm
from ocellus.nn.rope import RopeConfig, RotaryEmbedding, apply_rotary


def omni_attention_mask(is_image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """is_image [B, T] (True on image-token positions), keep [B, T] (False on <pad>) -> bool [B, 1, T, T],
    True = may attend. Causal everywhere, plus full attention within each contiguous image span;
    pad columns removed; every query sees itself (so a pad row is never empty)."""
    B, T = is_image.shape
    starts = is_image & ~F.pad(is_image, (1, 0))[:, :-1]                               # first token of a span
    span = torch.where(is_image, starts.long().cumsum(1), 0)                           # [B, T] 0 = text
    causal = torch.ones(T, T, dtype=torch.bool, device=is_image.device).tril()        # [T, T]
    same_image = (span[:, :, None] == span[:, None, :]) & (span[:, :, None] > 0)      # [B, T, T]
    mask = (causal[None] | same_image) & keep[:, None, :]                             # [B, Tq, Tk]
    return (mask | torch.eye(T, dtype=torch.bool, device=is_image.device))[:, None]   # [B, 1, T, T]


@dataclass(frozen=True)
class ShowoConfig:
    vocab_size: int
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    max_len: int = 64
    eps: float = 1e-6


class QKNormAttention(nn.Module):
    """Self-attention with RMSNorm on per-head q and k (before RoPE), under an explicit mask."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(self.head_dim, eps), RMSNorm(self.head_dim, eps)

    def forward(self, x: torch.Tensor, rope, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        split = lambda t: t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)   # [B, H, T, Dh]
        q, k = self.q_norm(split(self.q_proj(x))), self.k_norm(split(self.k_proj(x)))
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = attend(q, k, split(self.v_proj(x)), mask, is_causal=False)                  # [B, H, T, Dh]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D))


class ShowoBlock(nn.Module):
    def __init__(self, cfg: ShowoConfig):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.eps), RMSNorm(cfg.dim, cfg.eps)
        self.self_attn, self.mlp = QKNormAttention(cfg.dim, cfg.num_heads, cfg.eps), SwiGLU(cfg.dim, 4 * cfg.dim)

    def forward(self, x, rope, mask):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Showo(WithImageTokenizer):
    def __init__(self, cfg: ShowoConfig, tokenizer: VQVAE, vocab: UnifiedVocab, text: WordVocab, grid: int,
                 mtp_weight: float = 1.0, ntp_weight: float = 1.0):
        super().__init__(tokenizer)
        if cfg.vocab_size != vocab.size or vocab.num_codes != tokenizer.cfg.num_codes or vocab.text_size != len(text):
            raise ConfigError(f"Show-o sizes disagree: config vocab {cfg.vocab_size} vs layout {vocab.size}, "
                              f"codes {vocab.num_codes} vs tokenizer {tokenizer.cfg.num_codes}, "
                              f"text {vocab.text_size} vs {len(text)}")
        self.cfg, self.vocab, self.text, self.grid, self.N = cfg, vocab, text, grid, grid * grid
        self.mtp_weight, self.ntp_weight = mtp_weight, ntp_weight
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(ShowoBlock(cfg) for _ in range(cfg.num_layers))
        self.norm, self.lm_head = RMSNorm(cfg.dim, cfg.eps), nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.rotary_emb = RotaryEmbedding(RopeConfig(head_dim=cfg.dim // cfg.num_heads,
                                                     max_position_embeddings=cfg.max_len))
        for m in self.parts()["transformer"].modules():   # not the tokenizer: its codebook is trained
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def parts(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer, "transformer": nn.ModuleList(
            [self.embed_tokens, self.layers, self.norm, self.lm_head])}


    def is_image(self, ids: torch.Tensor) -> torch.Tensor:
        """Image-token positions: codes and <mask> (the markers <boi>/<eoi> count as text)."""
        return (ids >= self.vocab.code_base) | (ids == self.vocab.mask)

    # -- sequences -------------------------------------------------------------------------------------
    def sequence(self, caption: str, codes: torch.Tensor, task: str, uncond: bool = False):
        """t2i: <bos> caption <boi> codes <eoi> (codes get masked in forward; labels = codes at their own
        positions); i2t: <bos> <boi> codes <eoi> caption <eos> (labels = the caption, next-token)."""
        v, text = self.vocab, self.text.encode(caption)
        text = [PAD] * len(text) if uncond else text
        image = [v.boi] + (codes.flatten() + v.code_base).tolist() + [v.eoi]
        if task == "t2i":
            ids = [BOS] + text + image
            return ids, [-100] * (len(text) + 2) + ids[len(text) + 2:-1] + [-100]
        if task == "i2t":
            ids = [BOS] + image + text + [EOS]
            return ids, [-100] * (len(image) + 1) + text + [EOS]
        raise InputError(f"task must be 't2i' or 'i2t', got {task!r}")

    def logits(self, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] under the omni-attention mask; <pad> columns never attended."""
        if ids.shape[1] > self.cfg.max_len:
            raise InputError(f"sequence of {ids.shape[1]} tokens exceeds Show-o's max_len {self.cfg.max_len}")
        keep = (ids != PAD) if keep is None else keep & (ids != PAD)
        pos = (keep.long().cumsum(1) - 1).clamp(min=0)                                 # left padding -> positions
        rope = self.rotary_emb(pos, dtype=self.embed_tokens.weight.dtype)
        mask = omni_attention_mask(self.is_image(ids), keep)
        x = self.embed_tokens(ids)                                                     # [B, T, D]
        for layer in self.layers:
            x = layer(x, rope, mask)
        return self.lm_head(self.norm(x))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values=None,
                generator: torch.Generator | None = None) -> UnifiedOutput:
        """Image-token labels (codes) train mask-token prediction: a cosine-scheduled share of each row's
        codes becomes <mask>, loss where masked. Text labels train next-token prediction."""
        keep = None if attention_mask is None else attention_mask.bool()
        if labels is None:
            return UnifiedOutput(None, self.logits(input_ids, keep))
        v = self.vocab
        is_code = (labels >= v.code_base) & self.is_image(input_ids)                   # [B, T] image targets
        r = torch.rand(len(input_ids), 1, generator=generator)
        n_codes = is_code.sum(1, keepdim=True)                                         # [B, 1]
        # Show-o's training code rounds the masked count (MaskGIT's paper takes the ceiling), at least one
        n_mask = torch.round(cosine_mask_ratio(r) * n_codes).clamp(min=1)
        rank = torch.rand(is_code.shape, generator=generator).masked_fill(~is_code, 2).argsort(1).argsort(1)
        masked = is_code & (rank < n_mask)                                             # n_mask codes per row
        logits = self.logits(input_ids.masked_fill(masked, v.mask), keep)
        loss = logits.new_zeros(())
        if masked.any():
            loss = loss + self.mtp_weight * F.cross_entropy(logits[masked].float(), labels[masked])
        text_target = labels[:, 1:]
        is_text = (text_target != -100) & (text_target < v.boi)
        if is_text.any():
            loss = loss + self.ntp_weight * F.cross_entropy(logits[:, :-1][is_text].float(), text_target[is_text])
        return UnifiedOutput(loss, logits)

    # -- inference ---------------------------------------------------------------------------------------
    def prompts(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional rows then unconditional ones (caption -> <pad>, so its columns are removed), each
        <bos> caption <boi> <mask>*N <eoi>, left padded -> ids [2B, T], image slot positions [2B, T]."""
        v = self.vocab
        rows = [[BOS] + self.text.encode(c) for c in captions]
        rows += [[BOS] + [PAD] * (len(r) - 1) for r in rows]
        ids, _ = left_pad([r + [v.boi] + [v.mask] * self.N + [v.eoi] for r in rows])
        return ids, ids == v.mask

    @torch.no_grad()
    def generate_image_ids(self, captions: list[str], steps: int = 8, guidance_weight: float = 2.0,
                           temperature: float = 1.0, choice_temperature: float = 4.5,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """MaskGIT decoding of the N image tokens with guidance (1 + w) l_cond - w l_uncond -> codes [B, N]."""
        if not isinstance(steps, int) or not 1 <= steps <= self.N:
            raise InputError(f"Show-o steps must be an int in 1..{self.N}, got {steps!r}")
        B, v = len(captions), self.vocab
        ids, slots = self.prompts(captions)
        codes = torch.full((B, self.N), v.mask)                                        # [B, N] current tokens
        for s in range(steps):
            ids[slots] = codes.repeat(2, 1).flatten()
            logits = self.logits(ids)[slots].view(2 * B, self.N, -1)[..., v.code_base:]  # [2B, N, K]
            logits = guide_weight(logits[:B], logits[B:], guidance_weight) if guidance_weight else logits[:B]
            masked = codes == v.mask
            logp = F.log_softmax(logits.float() / temperature, -1)
            u = torch.rand(logp.shape, generator=generator).clamp_min(1e-20)
            sampled = (logp - torch.log(-torch.log(u))).argmax(-1) + v.code_base      # Gumbel-max draw
            sampled = torch.where(masked, sampled, codes)
            conf = logp.gather(-1, (sampled - v.code_base)[..., None])[..., 0]        # [B, N]
            g = -torch.log(-torch.log(torch.rand(conf.shape, generator=generator).clamp_min(1e-20)))
            conf = torch.where(masked, conf + choice_temperature * (1 - (s + 1) / steps) * g, math.inf)
            remask = conf.argsort(1)[:, :masked_after_step(s, steps, self.N)]          # least confident
            codes = sampled.scatter(1, remask, v.mask)
        return codes - v.code_base

    @torch.no_grad()
    def generate_images(self, captions: list[str], **kw) -> torch.Tensor:
        codes = self.generate_image_ids(captions, **kw).view(-1, self.grid, self.grid)
        return self.tokenizer.decode_ids(codes).clamp(-1, 1)

    @torch.no_grad()
    def continue_text(self, rows: list[list[int]], max_new_tokens: int = 8) -> list[str]:
        """Greedy text after each prefix (full forward per step: the omni mask is causal over text)."""
        allowed = torch.zeros(self.vocab.size, dtype=torch.bool)
        allowed[EOS:self.vocab.text_size] = True
        ids, keep = left_pad(rows)
        out = []
        for _ in range(max_new_tokens):
            nxt = pick(self.logits(ids, keep.bool())[:, -1], allowed=allowed, temperature=0)
            out.append(nxt)
            ids, keep = torch.cat([ids, nxt[:, None]], 1), torch.cat([keep, keep.new_ones(len(ids), 1)], 1)
        return [self.text.decode(r) for r in torch.stack(out, 1).tolist()]

    def image_ids(self, codes: torch.Tensor) -> list[int]:
        return [self.vocab.boi] + (codes.flatten() + self.vocab.code_base).tolist() + [self.vocab.eoi]

    @torch.no_grad()
    def describe(self, pixel_values: torch.Tensor, max_new_tokens: int = 8) -> list[str]:
        return self.continue_text([[BOS] + self.image_ids(c) for c in self.codes(pixel_values)], max_new_tokens)

    @torch.no_grad()
    def mixed(self, caption: str, **kw) -> tuple[torch.Tensor, str]:
        """Mixed-modality inference in one sequence: text -> image (MaskGIT) -> text. The drawn image is
        written after its caption, and the model then continues with text about it."""
        codes = self.generate_image_ids([caption], **kw)[0]                            # [N]
        prefix = [BOS] + self.text.encode(caption) + self.image_ids(codes)
        said = self.continue_text([prefix + [EOS, BOS] + self.image_ids(codes)])[0]
        return self.tokenizer.decode_ids(codes.view(1, self.grid, self.grid)).clamp(-1, 1), said


def build_showo(spec: dict, tokenizer: VQVAE, text: WordVocab, image_size: int) -> Showo:
    known = {"dim", "num_layers", "num_heads", "mtp_weight", "ntp_weight"}
    if set(spec) - known:
        raise ConfigError(f"unknown Show-o model keys {sorted(set(spec) - known)}; known {sorted(known)}")
    grid = image_size // tokenizer.cfg.downsample_factor
    vocab = UnifiedVocab(len(text), tokenizer.cfg.num_codes, max_grid=max(grid, 1))
    cfg = ShowoConfig(vocab.size, int(spec.get("dim", 128)), int(spec.get("num_layers", 4)),
                      int(spec.get("num_heads", 4)), max_len=2 * (grid * grid + 16))
    return Showo(cfg, tokenizer, vocab, text, grid, float(spec.get("mtp_weight", 1.0)),
                 float(spec.get("ntp_weight", 1.0)))
