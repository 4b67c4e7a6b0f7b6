"""SigLIP checkpoints: SiglipModel / SiglipTextModel builders and config.json writer (the registry's Family).

SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"; reference:
google-research/big_vision, proj/image_text/siglip.py) is CLIP's dual encoder trained with a pairwise sigmoid
loss instead of the softmax: every image-text pair of the batch is an independent binary classification,
logits = exp(t') * cos + b with learned t' (init log 10) and bias b (init -10, so the many negatives start with
a small loss), labels +1 for matching pairs and -1 otherwise. No global normalisation over the batch, so it
works at any batch size, one pair included. The towers differ from CLIP's: a bidirectional text tower pooled
at the last position with a linear `head`, an image tower pooled by attention (MAP head); no projections.

The model is ocellus/models/contrastive/clip.py's DualEncoder with loss="sigmoid" (siglip_config); the key
tables are CLIP's (families/clip/). Matches transformers' SiglipModel (tests/parity/test_clip_parity.py).
"""
from __future__ import annotations

from ocellus.errors import ConfigError
from ocellus.hub.families import Family
from ocellus.models.contrastive.clip import DualEncoder, siglip_config
from ocellus.models.families.clip.checkpoint import DUAL_KEYS, TEXT_KEYS, towers_hf_config
from ocellus.models.text.clip_text import TextTowerConfig, TextTransformer
from ocellus.models.vision.vit import ViTConfig, VisionTransformer

MODEL_TYPES = ("siglip", "siglip_text_model")


def build_siglip(cfg: dict) -> DualEncoder:
    """A SiglipModel config.json dict -> DualEncoder."""
    return DualEncoder(VisionTransformer(ViTConfig.from_hf(cfg)), TextTransformer(TextTowerConfig.from_hf(cfg)),
                       siglip_config(hf=dict(cfg)))


def siglip_hf_config(model: DualEncoder) -> dict:
    if model.config.projection_dim is not None or model.logit_bias is None:
        raise ConfigError("a SiglipModel has no projections and has a logit_bias")
    return towers_hf_config(model, "siglip", "SiglipModel")


def family(architecture: str):
    """The Family of one architecture (hub/families.py): SiglipModel, SiglipTextModel."""
    return {"SiglipModel": Family(name="siglip", model_class=DualEncoder, build=build_siglip, keymap=DUAL_KEYS,
                                  hf_config=siglip_hf_config),
            "SiglipTextModel": Family(name="siglip_text", model_class=TextTransformer,
                                      build=lambda cfg: TextTransformer(TextTowerConfig.from_hf(cfg)),
                                      keymap=TEXT_KEYS, hf_config=lambda m: m.config.to_hf())}[architecture]
