"""SEED's detokenizer, and the SEED image codec: image -> Q discrete codes -> image.

Ge et al. 2023, "Planting a SEED of Vision in Large Language Model", sec. 3.1 (reference:
AILab-CVC/SEED, `SeedLlamaTokenizer.decode_image`): the codes are turned back into an image
embedding by the tokenizer's reverse transformer (seed.py), and that embedding conditions a
diffusion model (unCLIP Stable Diffusion, whose condition is a CLIP image embedding) which draws
the image. Here the diffusion model is the project's DiffusionModel (models/generative/
latent_diffusion.py: a UNet with cross-attention, in pixel space or over a VQ-VAE's latents) and
the condition is the reconstructed embedding instead of a class label:

    codes [B, Q] -> SeedTokenizer.decode_embedding -> e [B, E] -> EmbeddingConditioner -> [B, k, D]
    -> UNet cross-attention -> DDIM (classifier-free guidance against a learned null condition) -> image

unCLIP-SD is not available offline: the embedding is the frozen ViT's pooled vector that the
tokenizer was trained to reconstruct (seed.py), and the decoder is trained here on pairs
(decode_embedding(encode(x)), x), i.e. on exactly what it receives at inference.

`SeedCodec` puts both halves in one module, saved as one directory by
models/generative/checkpoint.py (kind "seed"): `encode(pixels) -> codes`, `decode(codes) -> pixels`.
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError, positive_int
from ocellus.models.generative.latent_diffusion import DiffusionModel
from ocellus.models.unified.seed import SeedTokenizer
from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.generative.checkpoint import _dataclass, build, load_generator
from ocellus.models.generative.ddpm import DiffusionConfig
from ocellus.models.generative.unet import UNet, UNetConfig
from ocellus.models.vision.vit import VisionTransformer, ViTConfig


class EmbeddingConditioner(nn.Module):
    """A condition vector [B, E] -> k condition tokens [B, k, D] for the UNet's cross-attention.

    LayerNorm -> Linear -> SiLU -> Linear(D, k * D): the embedding's scale does not matter and k
    tokens give the cross-attention more than one key to choose from. The learned null condition
    of classifier-free guidance is k learned tokens; a row of NaN in the input means "no condition"
    (it is what `null_like` and `drop` write, so DiffusionModel's guidance can batch conditional and
    unconditional rows in one tensor). NaN is refused in what a caller passes (`check_labels`)."""

    def __init__(self, embed_dim: int, dim: int, num_tokens: int = 4):
        super().__init__()
        if num_tokens < 1:
            raise ConfigError(f"EmbeddingConditioner needs num_tokens >= 1, got {num_tokens}")
        self.embed_dim, self.dim, self.num_tokens = embed_dim, dim, num_tokens
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, dim), nn.SiLU(), nn.Linear(dim, num_tokens * dim))
        self.null = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)

    def check_labels(self, embeds: torch.Tensor) -> torch.Tensor:
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point() or embeds.dim() != 2 \
                or embeds.shape[1] != self.embed_dim:
            raise InputError(f"condition embeddings must be a float tensor [B, {self.embed_dim}], got "
                             f"{getattr(embeds, 'dtype', type(embeds).__name__)} {tuple(getattr(embeds, 'shape', ()))}")
        bad = ~torch.isfinite(embeds).all(-1)
        if bad.any():
            raise InputError(f"condition embedding row {int(bad.nonzero()[0])} is not finite (for unconditional "
                             f"samples use guidance_scale=0)")
        return embeds

    def drop(self, embeds: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-time condition dropout: each row becomes the null condition with probability p."""
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"condition dropout probability must be in [0, 1), got {p}")
        drop = torch.rand(embeds.shape[0], generator=generator, device=embeds.device) < p    # [B]
        return torch.where(drop[:, None], self.null_like(embeds), embeds)

    def null_like(self, embeds: torch.Tensor) -> torch.Tensor:
        return torch.full_like(embeds, math.nan)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        floating = isinstance(embeds, torch.Tensor) and embeds.is_floating_point()
        clean = self.check_labels(torch.where(torch.isnan(embeds), 0.0, embeds) if floating else embeds)
        nan = torch.isnan(embeds)
        is_null = nan.all(-1)                                                         # [B]
        if (nan.any(-1) & ~is_null).any():
            raise InputError(f"condition embedding row {int((nan.any(-1) & ~is_null).nonzero()[0])} is partly NaN: "
                             f"a row is either all NaN (no condition) or finite")
        B = embeds.shape[0]
        tokens = self.mlp(self.norm(clean)).view(B, self.num_tokens, self.dim)      # [B, k, D]
        return torch.where(is_null[:, None, None], self.null[None].to(tokens.dtype), tokens)


class SeedCodec(nn.Module):
    """SEED tokenizer + diffusion detokenizer: images [B, 3, S, S] in [-1, 1] <-> codes [B, Q] in [0, num_codes).

    `num_codes` and `num_queries` (Q) are what an LLM over the codes needs (SEED-LLaMA adds num_codes
    vocabulary entries and reads/writes Q of them between [IMG] markers). `decode` needs the
    detokenizer; a codec saved before it was trained has none and `decode` says so."""

    def __init__(self, tokenizer: SeedTokenizer, detokenizer: DiffusionModel | None, image_size: int,
                 generate: dict | None = None):
        super().__init__()
        self.tokenizer, self.detokenizer, self.image_size = tokenizer, detokenizer, image_size
        self.num_codes, self.num_queries = tokenizer.num_codes, tokenizer.Q
        self.generate_defaults = {"guidance_scale": 3.0, "steps": 25, **(generate or {})}

    def parts(self) -> dict[str, nn.Module]:
        parts = {"tokenizer": self.tokenizer}
        if self.detokenizer is not None:
            parts["detokenizer"] = self.detokenizer
        return parts

    def check_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        S = self.image_size
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() \
                or tuple(pixel_values.shape[1:]) != (3, S, S) or pixel_values.dim() != 4:
            raise InputError(f"pixel_values must be a float tensor [B, 3, {S}, {S}] in [-1, 1], got "
                             f"{getattr(pixel_values, 'dtype', type(pixel_values).__name__)} "
                             f"{tuple(getattr(pixel_values, 'shape', ()))}")
        lo, hi = pixel_values.min().item(), pixel_values.max().item()
        if lo < -1.001 or hi > 1.001:
            raise InputError(f"pixel_values must lie in [-1, 1] (x / 127.5 - 1), got values in [{lo:.3g}, {hi:.3g}]")
        return pixel_values

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] in [-1, 1] -> codes [B, Q] (int64), left to right causal."""
        return self.tokenizer.encode(self.check_pixels(pixel_values))

    @torch.no_grad()
    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q] -> the reconstructed image embedding [B, E] that conditions the diffusion."""
        return self.tokenizer.decode_embedding(codes)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, guidance_scale: float | None = None, steps: int | None = None,
               seed: int = 0, sampler: str = "ddim") -> torch.Tensor:
        """codes [B, Q] -> images [B, 3, S, S] in [-1, 1]; the same codes + seed give the same images."""
        if self.detokenizer is None:
            raise ConfigError("this SEED codec has no detokenizer (it was saved before the diffusion decoder was "
                              "trained): encode works, decode needs a codec directory with `detokenizer` in config.json")
        steps = self.generate_defaults["steps"] if steps is None else steps
        scale = self.generate_defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        positive_int(steps, "decode: steps")
        e = self.embed(codes)
        g = torch.Generator(device=e.device).manual_seed(int(seed))
        return self.detokenizer.generate(e, steps=steps, sampler=sampler, guidance_scale=scale, generator=g)

    @classmethod
    def from_dir(cls, path: str | Path) -> "SeedCodec":
        model = load_generator(path)
        if not isinstance(model, cls):
            raise ConfigError(f"{path} holds a {model.spec.get('kind')!r} generator, not a SEED codec (kind 'seed')")
        return model


# -- building from a spec (config.json of kind "seed") ------------------------------------------------------

def tokenizer_spec(tok: SeedTokenizer) -> dict:
    """The numbers that rebuild `tok` (vision and Q-Former configs included): part of a codec spec."""
    q = tok.qformer.config
    return {"vision": tok.vision.config.to_hf(),
            "qformer": {f.name: getattr(q, f.name) for f in fields(q) if f.name != "hf"},
            "num_codes": tok.num_codes, "code_dim": tok.quantizer.dim, "embed_dim": tok.embed_dim,
            "text_dim": tok.text_dim, "recon_layers": len(tok.reverse), "recon_heads": tok.reverse[0].attn.num_heads,
            "ema": tok.quantizer.ema, "restart_threshold": tok.quantizer.restart_threshold}


def build_tokenizer(spec: dict) -> SeedTokenizer:
    spec = dict(spec)
    for key in ("vision", "qformer", "num_codes", "code_dim", "embed_dim"):
        if key not in spec:
            raise ConfigError(f"SEED tokenizer spec needs {key!r}; it has {sorted(spec)}")
    vision = VisionTransformer(ViTConfig.from_hf(spec.pop("vision")))
    qformer = QFormer(_dataclass(QFormerConfig, spec.pop("qformer"), "seed tokenizer.qformer"))
    return SeedTokenizer(vision, qformer, **spec)


def build_detokenizer(spec: dict, embed_dim: int, image_size: int) -> DiffusionModel:
    """{unet: {...}, diffusion: {...}, context_tokens: k, p_uncond, autoencoder: <a VQ-VAE spec> | absent}."""
    unknown = set(spec) - {"unet", "diffusion", "context_tokens", "p_uncond", "autoencoder"}
    if unknown:
        raise ConfigError(f"SEED detokenizer spec: unknown keys {sorted(unknown)}")
    ae = build(spec["autoencoder"]) if spec.get("autoencoder") else None
    unet_cfg = {"in_channels": 3, **spec.get("unet", {})}
    if ae is not None:
        unet_cfg["in_channels"] = ae.cfg.embed_dim
    unet = UNet(_dataclass(UNetConfig, unet_cfg, "seed detokenizer.unet"))
    if unet.cfg.context_dim is None:
        raise ConfigError("the SEED detokenizer's UNet needs context_dim (it cross-attends to the embedding tokens)")
    conditioner = EmbeddingConditioner(embed_dim, unet.cfg.context_dim, int(spec.get("context_tokens", 4)))
    diffusion = _dataclass(DiffusionConfig, spec.get("diffusion", {}), "seed detokenizer.diffusion")
    return DiffusionModel(unet, conditioner, diffusion, ae, image_size, float(spec.get("p_uncond", 0.1)))


def build_codec(spec: dict) -> SeedCodec:
    """A codec spec: {kind: seed, image_size, tokenizer: {...}, detokenizer: {...} | null, generate: {...}}."""
    unknown = set(spec) - {"kind", "image_size", "tokenizer", "detokenizer", "generate", "class_names"}
    if unknown:
        raise ConfigError(f"SEED codec spec: unknown keys {sorted(unknown)}")
    if "tokenizer" not in spec:
        raise ConfigError("SEED codec spec needs `tokenizer`")
    size = int(spec.get("image_size", 16))
    tok = build_tokenizer(spec["tokenizer"])
    detok = build_detokenizer(spec["detokenizer"], tok.embed_dim, size) if spec.get("detokenizer") else None
    return SeedCodec(tok, detok, size, spec.get("generate"))
