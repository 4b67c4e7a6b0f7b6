"""Image generators as directories: config.json (a build spec) + model.safetensors.

A spec is plain JSON: {"kind": "diffusion" | "vqvae" | "maskgit" | "ar", the numbers of each part,
"class_names": [...], "image_size": S}. `build` turns a spec into a model (generators over VQ
tokens and latent diffusion embed their tokenizer's spec, so a directory is self-contained);
its Family (the registry's "image_generator") is models/families/image_generator/, so ocellus.load / ocellus.save
open it; `save_generator` / `load_generator` are thin wrappers over that one strict path.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from torch import nn

from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import CheckpointError, ConfigError
from ocellus.hub.checkpoint import load_model, save_model
from ocellus.hub.checkpoint_dir import read_config
from ocellus.hub.families import import_piece
from ocellus.models.generative.ar_image import ar_decoder_config, ARImage
from ocellus.models.generative.ddpm import DiffusionConfig
from ocellus.models.generative.latent_diffusion import DiffusionModel
from ocellus.models.generative.maskgit import MaskGIT, TokenTransformerConfig
from ocellus.models.generative.unet import Conditioner, UNet, UNetConfig
from ocellus.models.generative.text_conditioning import TextConditioner, TextDiffusionModel
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.text.clip_text import TextTowerConfig, TextTransformer
from ocellus.models.text.decoder import DecoderLM

MODEL_TYPE = "ocellus_image_generator"
KINDS = ("diffusion", "vqvae", "vqgan", "maskgit", "ar", "seed")
# Kinds whose builder lives outside this package, by (module, function), imported the first time one is built (as
# hub/families.py names a family's pieces): SEED's codec sits with the unified models that read its codes and is
# built from this package's parts, so an import either way would close a generative <-> unified cycle; a VQ-VAE
# load imports none of it.
BUILDERS = {"seed": ("ocellus.models.unified.seed_detokenizer", "build_codec")}


def _dataclass(cls, d: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def build(spec: dict) -> nn.Module:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"model.kind must be one of {KINDS}, got {kind!r}")
    classes = list(spec.get("class_names") or [])
    if kind in ("vqvae", "vqgan"):
        model = VQVAE(_dataclass(VQConfig, spec.get("vq", {}), "model.vq"))
    elif kind in BUILDERS:   # the SEED image codec: tokenizer + diffusion detokenizer in one directory
        module, function = BUILDERS[kind]
        model = getattr(import_piece(module, f"generator kind {kind!r}"), function)(spec)
    elif kind == "diffusion":
        ae = build(spec["autoencoder"]) if spec.get("autoencoder") else None
        unet_cfg = dict(spec.get("unet", {}))
        if ae is not None:
            unet_cfg["in_channels"] = ae.cfg.embed_dim
        text = TextTransformer(TextTowerConfig.from_hf(spec["text_encoder"])) if spec.get("text_encoder") else None
        if text is not None:   # the UNet's cross-attention reads the text tower's states
            unet_cfg.setdefault("context_dim", text.config.hidden_size)
        unet = UNet(_dataclass(UNetConfig, unet_cfg, "model.unet"))
        schedule = _dataclass(DiffusionConfig, spec.get("diffusion", {}), "model.diffusion")
        if text is not None:
            if unet.cfg.context_dim != text.config.hidden_size:
                raise ConfigError(f"unet.context_dim {unet.cfg.context_dim} must equal the text encoder's hidden_size "
                                  f"{text.config.hidden_size} (leave it out to take it from the text encoder)")
            model = TextDiffusionModel(unet, TextConditioner(text, bool(spec.get("train_text_encoder", False))),
                                       schedule, ae, spec.get("image_size", 16), spec.get("p_uncond", 0.1))
        elif not classes or unet.cfg.context_dim is None:
            raise ConfigError("a diffusion model needs class_names and unet.context_dim (class-conditional) or a "
                              "text_encoder (text-conditional: model.text_encoder_from in a recipe)")
        else:
            model = DiffusionModel(unet, Conditioner(len(classes), unet.cfg.context_dim), schedule,
                                   ae, spec.get("image_size", 16), spec.get("p_uncond", 0.1))
    else:
        tok = build(spec["tokenizer"])
        f = tok.cfg.downsample_factor
        size = spec.get("image_size", 16)
        if size % f:
            raise ConfigError(f"image_size {size} is not divisible by the tokenizer's downsampling factor {f}")
        t = dict(spec.get("transformer", {}))
        if kind == "maskgit":
            model = MaskGIT(_dataclass(TokenTransformerConfig, {"num_codes": tok.cfg.num_codes, "grid": size // f,
                                                                "num_classes": len(classes), **t}, "model.transformer"), tok)
        else:
            model = ARImage(DecoderLM(ar_decoder_config(tok.cfg.num_codes, len(classes), size // f, **t)),
                            tok, len(classes), size // f)
    model.spec = dict(spec)
    return model


def save_generator(model: nn.Module, out_dir: str | Path) -> Path:
    """config.json (model_type + the spec) + model.safetensors, through hub's one save path."""
    model.family_name = "image_generator"   # any generator class (SEED's codec too) saves in this format
    # a text-conditioned generator keeps its CLIP tokenizer beside the weights (tokenizer.json), as a CLIP export does
    return save_model(model, out_dir, tokenizer=getattr(getattr(model, "conditioner", None), "tokenizer", None))


def load_generator(path: str | Path) -> nn.Module:
    """An image-generator directory -> its model, through hub's one strict load path (= ocellus.load); a
    directory holding another kind of model is refused naming what it holds."""
    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not cfg_file.exists() or not weights.exists():
        raise CheckpointError(f"{path} is not an image-generator checkpoint: needs config.json and model.safetensors")
    spec = read_config(path)
    kind = spec.pop("model_type", None)
    if kind != MODEL_TYPE:
        what = kind or (spec.get("architectures") or ["unknown"])[0]
        raise CheckpointError(f"{path} holds a {what!r} model, not an image generator (config.json model_type "
                              f"{MODEL_TYPE!r}, the export of an image_generation recipe such as "
                              f"recipes/generation/ddpm_digits.yaml); ocellus generate / chat open language and "
                              f"vision-language models")
    model = load_model(path)
    if isinstance(model, TextDiffusionModel):
        model.conditioner.tokenizer = Tokenizer.from_dir(path)
    return model


def clip_text_encoder(path: str | Path) -> tuple[TextTransformer, Tokenizer]:
    """The text tower and tokenizer of a CLIP checkpoint directory (a CLIPModel such as recipes/clip_tiny_shapes'
    export, or a CLIPTextModel), through the one strict load: a text-to-image model's condition encoder."""
    model = load_model(path)
    tower = getattr(model, "text_model", model)
    if not isinstance(tower, TextTransformer) or not tower.config.causal:
        raise ConfigError(f"{path} holds a {type(model).__name__}, not a CLIP model: text_encoder_from takes a CLIP "
                          f"export (e.g. recipes/clip_tiny_shapes/clip.yaml's out_dir/model)")
    return tower, Tokenizer.from_dir(path)
