"""The SEED tokenizer: images -> a 1-D sequence of semantic, left-to-right (causal) discrete codes.

Ge et al. 2023, "Planting a SEED of Vision in Large Language Model" (reference: AILab-CVC/SEED,
`Blip2QformerQuantizer`). Sec. 3.1:

    ViT features -> causal Q-Former (learned queries; query i attends queries <= i, and the image)
    -> [B, Q, D] -> project down -> VQ codebook -> Q code ids (the image's "words")

trained with (1) a contrastive loss between the *last* causal query (which has seen all of them) and
the caption embedding, (2) the VQ codebook/commitment loss, (3) reconstruction of the image
embedding from the codes (a small bidirectional "reverse" transformer over the code embeddings,
pooled): in SEED this embedding is unCLIP-SD's CLIP image embedding, which then conditions the
diffusion decoder (detokenization, seed_detokenizer.py). Offline there is no unCLIP-SD: the target
here is the frozen ViT's pooled embedding (what `image_embeds` the caller passes). Caption
embeddings come from any text encoder (the caller's; the shapes recipe uses all-MiniLM-L6-v2), and
may have another width than the image embedding (`text_dim`), as in SEED (BLIP-2 text 256, CLIP 1024).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.models.connectors.qformer import QFormer
from ocellus.models.contrastive.losses import info_nce
from ocellus.models.generative.maskgit import Block
from ocellus.models.generative.vq import QuantizerOutput, VectorQuantizer
from ocellus.models.vision.vit import VisionTransformer


@dataclass
class SeedOutput:
    loss: torch.Tensor
    contrastive: torch.Tensor
    reconstruction: torch.Tensor
    quant: QuantizerOutput
    codes: torch.Tensor            # [B, Q]


def causal_query_mask(q: int, device=None) -> torch.Tensor:
    """[1, 1, Q, Q] bool: query i may attend queries 0..i (True = may attend)."""
    return torch.ones(q, q, dtype=torch.bool, device=device).tril()[None, None]


class ContrastiveHead(nn.Module):
    """The last causal query -> a unit vector in the caption space; logits = exp(log_scale) * cosine."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, text_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, last_query: torch.Tensor, caption_embeds: torch.Tensor) -> torch.Tensor:
        """[B, D] queries, [T, text_dim] captions -> [B, T] scaled similarities."""
        return self.log_scale.exp() * F.normalize(self.proj(last_query), dim=-1) @ F.normalize(caption_embeds, dim=-1).t()


class SeedTokenizer(nn.Module):
    def __init__(self, vision: VisionTransformer, qformer: QFormer, num_codes: int, code_dim: int, embed_dim: int,
                 recon_layers: int = 1, recon_heads: int = 2, text_dim: int | None = None, ema: bool = False,
                 restart_threshold: float = 0.0):
        super().__init__()
        D = qformer.config.hidden_size
        self.vision = vision.eval().requires_grad_(False)          # frozen, as SEED's EVA-CLIP ViT
        self.qformer, self.Q = qformer, qformer.config.num_query_tokens
        self.num_codes, self.embed_dim, self.text_dim = num_codes, embed_dim, text_dim or embed_dim
        self.down, self.up = nn.Linear(D, code_dim), nn.Linear(code_dim, D)
        self.quantizer = VectorQuantizer(num_codes, code_dim, ema=ema, restart_threshold=restart_threshold)
        self.reverse = nn.ModuleList(Block(D, recon_heads) for _ in range(recon_layers))
        self.recon_head = nn.Linear(D, embed_dim)
        self.contrast = ContrastiveHead(D, self.text_dim)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vision.eval()
        return self

    def parts(self) -> dict[str, nn.Module]:
        """For training stages: {vision: frozen, ...: full} trains everything but the ViT."""
        return {"vision": self.vision, "qformer": self.qformer, "contrast": self.contrast,
                "codebook": nn.ModuleList([self.down, self.quantizer, self.up]),
                "reconstruction": nn.ModuleList([*self.reverse, self.recon_head])}

    def queries(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.vision.features(pixel_values, layer=-1)                           # [B, P, Dv]
        return self.qformer(feats, mask=causal_query_mask(self.Q, feats.device))       # [B, Q, D]

    def quantize(self, q: torch.Tensor) -> QuantizerOutput:
        z = self.down(q).transpose(1, 2)[..., None]                                    # [B, C, Q, 1]
        return self.quantizer(z)

    def embedding_from(self, z_q: torch.Tensor) -> torch.Tensor:
        """quantized codes [B, C, Q, 1] -> the reconstructed image embedding [B, E]."""
        x = self.up(z_q[..., 0].transpose(1, 2))                                       # [B, Q, D]
        for block in self.reverse:
            x = block(x)
        return self.recon_head(x.mean(1))

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """images -> code ids [B, Q] (the 1-D causal sequence an LLM reads and writes)."""
        return self.quantize(self.queries(pixel_values)).indices[..., 0]

    @torch.no_grad()
    def decode_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        """code ids [B, Q] -> image embedding [B, E] (what would condition the diffusion decoder)."""
        check_codes(codes, self.Q, self.num_codes)
        return self.embedding_from(self.quantizer.decode_indices(codes[..., None]))

    def last_query_logits(self, pixel_values: torch.Tensor, caption_embeds: torch.Tensor) -> torch.Tensor:
        """[B] images x [T, text_dim] captions -> [B, T] similarities of the last causal query (retrieval)."""
        return self.contrast(self.queries(pixel_values)[:, -1], caption_embeds)

    def forward(self, pixel_values: torch.Tensor, caption_embeds: torch.Tensor,
                image_embeds: torch.Tensor, caption_ids: torch.Tensor | None = None) -> SeedOutput:
        """caption_embeds [B, text_dim] (a text encoder's), image_embeds [B, embed_dim] (the reconstruction
        target); caption_ids [B] (optional): pairs with equal ids are all positives of each other, which a
        batch of few distinct captions needs (else "red circle" is a negative of "red circle")."""
        B = pixel_values.shape[0]
        if caption_embeds.shape != (B, self.text_dim) or image_embeds.shape != (B, self.embed_dim):
            raise InputError(f"caption_embeds {tuple(caption_embeds.shape)} must be [B={B}, text_dim={self.text_dim}] "
                             f"and image_embeds {tuple(image_embeds.shape)} [B={B}, embed_dim={self.embed_dim}]")
        q = self.queries(pixel_values)
        contrastive = info_nce(self.contrast(q[:, -1], caption_embeds), caption_ids)   # [B, B] image x text
        quant = self.quantize(q)
        reconstruction = F.mse_loss(self.embedding_from(quant.z_q), image_embeds)
        return SeedOutput(contrastive + quant.loss + reconstruction, contrastive, reconstruction, quant,
                          quant.indices[..., 0])


def check_codes(codes, num_queries: int, num_codes: int) -> torch.Tensor:
    """SEED code ids must be an integer tensor [B, Q] with every id in [0, num_codes)."""
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise InputError(f"SEED codes must be an integer tensor [B, {num_queries}], got "
                         f"{getattr(codes, 'dtype', type(codes).__name__)}")
    if codes.dim() != 2 or codes.shape[1] != num_queries or codes.shape[0] == 0:
        raise InputError(f"SEED codes must be [B, {num_queries}] (B >= 1), got {tuple(codes.shape)}")
    bad = (codes < 0) | (codes >= num_codes)
    if bad.any():
        b, i = (int(v) for v in bad.nonzero()[0])
        raise InputError(f"SEED code {int(codes[b, i])} at row {b}, position {i} is out of range: this codebook has "
                         f"ids 0..{num_codes - 1}")
    return codes
