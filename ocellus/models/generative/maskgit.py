"""MaskGIT: a bidirectional transformer over VQ tokens, decoded in a few parallel steps.

Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer" (reference: google-research/maskgit,
and the PyTorch port in huggingface/open-muse). Training (sec. 3.1): draw r ~ U(0, 1), mask
ceil(gamma(r) * N) of the N tokens with gamma(r) = cos(pi/2 r) (the cosine schedule), predict the
originals; cross-entropy only on the masked positions. Decoding (sec. 3.2), for step s = 1..S:
predict every masked token, sample one per position, give kept tokens infinite confidence and
sampled ones their log-probability plus Gumbel noise scaled by choice_temperature * (1 - s/S)
(annealed: random early, greedy late), then re-mask the floor(gamma(s/S) * N) least confident.
The class condition is a prefix token (index num_classes = the null class, dropped with p_uncond
during training) so logits take classifier-free guidance like diffusion epsilons.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.models.generative.guidance import check_guidance_scale, drop_condition, guided
from ocellus.models.generative.vq import VQVAE
from ocellus.nn.attention import Attention
from ocellus.nn.mlp import GeluMLP
from ocellus.nn.positional import sinusoidal_encoding


@dataclass(frozen=True)
class TokenTransformerConfig:
    num_codes: int
    grid: int                      # tokens per side (image_size / tokenizer downsampling)
    num_classes: int
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    p_uncond: float = 0.1


@dataclass
class LossOutput:
    loss: torch.Tensor


class Block(nn.Module):
    """Pre-norm transformer block (bidirectional when causal=False)."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads, causal=causal, qkv_bias=True, out_bias=True)
        self.norm2, self.mlp = nn.LayerNorm(dim), GeluMLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def cosine_mask_ratio(r: torch.Tensor | float):
    """gamma(r) = cos(pi/2 r): 1 (all masked) at r = 0, 0 at r = 1."""
    return torch.cos(r * math.pi / 2) if torch.is_tensor(r) else math.cos(r * math.pi / 2)


def masked_after_step(step: int, steps: int, n: int) -> int:
    """How many tokens stay masked after decoding step `step` (0-based) of `steps`: floor(gamma((s+1)/S) N),
    but at least one fewer than before (every step reveals something), and 0 after the last."""
    before = n if step == 0 else masked_after_step(step - 1, steps, n)
    after = math.floor(cosine_mask_ratio((step + 1) / steps) * n)
    return max(0, min(after, before - 1))


class MaskGIT(nn.Module):
    def __init__(self, cfg: TokenTransformerConfig, tokenizer: VQVAE):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer.eval().requires_grad_(False)
        self.mask_id, self.null_id, self.N = cfg.num_codes, cfg.num_classes, cfg.grid * cfg.grid
        self.tok_embed = nn.Embedding(cfg.num_codes + 1, cfg.dim)          # + [MASK]
        self.class_embed = nn.Embedding(cfg.num_classes + 1, cfg.dim)      # + null class
        self.register_buffer("pos", sinusoidal_encoding(self.N + 1, cfg.dim), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.num_heads) for _ in range(cfg.num_layers))
        self.norm, self.head = nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.num_codes)

    def parts(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer, "transformer": nn.ModuleList(
            [self.tok_embed, self.class_embed, self.blocks, self.norm, self.head])}

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()   # frozen: its quantizer must not update EMA/restart statistics
        return self

    def logits(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ids [B, N] (mask_id where masked), labels [B] -> [B, N, num_codes]."""
        x = torch.cat([self.class_embed(labels)[:, None], self.tok_embed(ids)], dim=1) + self.pos  # [B, 1+N, D]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 1:]))

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 1 or ((labels < 0) | (labels > self.null_id)).any():
            raise InputError(f"class labels must be [B] ints in 0..{self.cfg.num_classes - 1} "
                             f"({self.null_id} = unconditional), got {labels.tolist()}")
        return labels

    @torch.no_grad()
    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        ids = self.tokenizer.encode_to_ids(pixel_values).flatten(1)                   # [B, N]
        if ids.shape[1] != self.N:
            raise InputError(f"images tokenize to {ids.shape[1]} tokens; this model was built for "
                             f"{self.cfg.grid}x{self.cfg.grid} = {self.N}")
        return ids

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None = None) -> LossOutput:
        ids = self.tokens(pixel_values)
        labels = self.check_labels(labels)
        if self.training:
            labels = drop_condition(labels, self.null_id, self.cfg.p_uncond, generator)
        B = ids.shape[0]
        r = torch.rand(B, generator=generator, device=ids.device)
        n_mask = torch.ceil(cosine_mask_ratio(r) * self.N).clamp(1, self.N)            # [B]
        rank = torch.rand(B, self.N, generator=generator, device=ids.device).argsort(1).argsort(1)
        masked = rank < n_mask[:, None]                                                # [B, N] n_mask per row
        logits = self.logits(ids.masked_fill(masked, self.mask_id), labels)
        return LossOutput(F.cross_entropy(logits[masked], ids[masked]))

    @torch.no_grad()
    def generate_tokens(self, labels: torch.Tensor, steps: int = 8, guidance_scale: float = 1.0,
                        temperature: float = 1.0, choice_temperature: float = 4.5,
                        generator: torch.Generator | None = None, trace: list | None = None) -> torch.Tensor:
        if not isinstance(steps, int) or steps <= 0 or steps > self.N:
            raise InputError(f"MaskGIT steps must be an int in 1..{self.N} (the number of tokens), got {steps!r}")
        if temperature <= 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        check_guidance_scale(guidance_scale)
        labels = self.check_labels(labels)
        B = labels.shape[0]
        ids = torch.full((B, self.N), self.mask_id, dtype=torch.long, device=labels.device)
        null = torch.full_like(labels, self.null_id)
        for s in range(steps):
            masked = ids == self.mask_id
            logits = guided(lambda i, c: self.logits(i, c), ids, labels, null, guidance_scale)  # [B, N, K]
            logp = F.log_softmax(logits / temperature, dim=-1)
            u = torch.rand(logp.shape, generator=generator, device=logp.device)
            sampled = (logp - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)    # Gumbel-max draw
            sampled = torch.where(masked, sampled, ids)
            conf = logp.gather(-1, sampled[..., None])[..., 0]                         # [B, N]
            g = -torch.log(-torch.log(torch.rand(conf.shape, generator=generator, device=conf.device).clamp_min(1e-20)))
            conf = conf + choice_temperature * (1 - (s + 1) / steps) * g
            conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
            n_next = masked_after_step(s, steps, self.N)
            remask = conf.argsort(1)[:, :n_next]                                      # least confident
            ids = sampled.scatter(1, remask, self.mask_id)
            if trace is not None:
                trace.append(int((masked.sum(1) - (ids == self.mask_id).sum(1))[0]))
        return ids

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, steps: int = 8, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        ids = self.generate_tokens(labels, steps, guidance_scale, generator=generator, **kw)
        g = self.cfg.grid
        return self.tokenizer.decode_ids(ids.view(-1, g, g)).clamp(-1, 1)             # [B, C, H, W]
