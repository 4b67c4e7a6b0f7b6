"""The SEED tokenizer: images -> a 1-D sequence of semantic, left-to-right (causal) discrete codes.

Ge et al. 2023, "Planting a SEED of Vision in Large Language Model" (reference: AILab-CVC/SEED,
`Blip2QformerQuantizer`). Sec. 3.1:

    ViT features -> causal Q-Former (learned queries; query i attends queries <= i, and the image)
    -> [B, Q, D] -> project down -> VQ codebook -> Q code ids (the image's "words")

trained with (1) a contrastive loss between the *last* causal query (which has seen all of them) and
the caption embedding, (2) the VQ codebook/commitment loss, (3) reconstruction of the image
embedding from the codes (a small bidirectional "reverse" transformer over the code embeddings,
pooled): in SEED this embedding is unCLIP-SD's CLIP image embedding, which then conditions the
diffusion decoder (detokenization). Offline there is no unCLIP-SD: the target here is the frozen
ViT's pooled embedding (what `image_embeds` the caller passes); conditioning a diffusion model of
models/generative on it is not implemented. Caption embeddings come from any text encoder (the caller's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.models.connectors.qformer import QFormer
from ocellus.models.generative.maskgit import Block
from ocellus.models.generative.vq import QuantizerOutput, VectorQuantizer
from ocellus.models.vision.vit import VisionTransformer
from ocellus.train.contrastive_losses import info_nce


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


class SeedTokenizer(nn.Module):
    def __init__(self, vision: VisionTransformer, qformer: QFormer, num_codes: int, code_dim: int, embed_dim: int,
                 recon_layers: int = 1, recon_heads: int = 2):
        super().__init__()
        D = qformer.config.hidden_size
        self.vision = vision.eval().requires_grad_(False)          # frozen, as SEED's EVA-CLIP ViT
        self.qformer, self.Q = qformer, qformer.config.num_query_tokens
        self.down, self.up = nn.Linear(D, code_dim), nn.Linear(code_dim, D)
        self.quantizer = VectorQuantizer(num_codes, code_dim)
        self.reverse = nn.ModuleList(Block(D, recon_heads) for _ in range(recon_layers))
        self.recon_head = nn.Linear(D, embed_dim)
        self.text_proj = nn.Linear(D, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def train(self, mode: bool = True):
        super().train(mode)
        self.vision.eval()
        return self

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
        if codes.dim() != 2 or codes.shape[1] != self.Q:
            raise InputError(f"SEED codes must be [B, {self.Q}], got {tuple(codes.shape)}")
        return self.embedding_from(self.quantizer.decode_indices(codes[..., None]))

    def forward(self, pixel_values: torch.Tensor, caption_embeds: torch.Tensor,
                image_embeds: torch.Tensor) -> SeedOutput:
        """caption_embeds [B, E] (a text encoder's), image_embeds [B, E] (the reconstruction target)."""
        if caption_embeds.shape != image_embeds.shape or caption_embeds.shape[0] != pixel_values.shape[0]:
            raise InputError(f"caption_embeds {tuple(caption_embeds.shape)} and image_embeds "
                             f"{tuple(image_embeds.shape)} must both be [B={pixel_values.shape[0]}, E]")
        q = self.queries(pixel_values)
        last = F.normalize(self.text_proj(q[:, -1]), dim=-1)                            # [B, E] the last query
        logits = self.log_scale.exp() * last @ F.normalize(caption_embeds, dim=-1).t()  # [B, B] image x text
        contrastive = info_nce(logits)                                                  # symmetric
        quant = self.quantize(q)
        reconstruction = F.mse_loss(self.embedding_from(quant.z_q), image_embeds)
        return SeedOutput(contrastive + quant.loss + reconstruction, contrastive, reconstruction, quant,
                          quant.indices[..., 0])
