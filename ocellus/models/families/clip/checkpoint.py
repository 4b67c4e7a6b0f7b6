"""CLIP checkpoints (the registry's "clip"): the key tables of CLIPModel, CLIPTextModel and
CLIPTextModelWithProjection, their builders (config.json -> model) and config.json writers; SigLIP's
(families/siglip/) reuse the tables and towers_hf_config. The model is models/contrastive/clip.py's DualEncoder.

Parameter names equal transformers' (vision_model.*, text_model.*, visual_projection, text_projection,
logit_scale, logit_bias); the tables map the towers' inner names (the image tower's rules: families/vit/).
"""
from __future__ import annotations

from ocellus.errors import ConfigError
from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.contrastive.clip import DualEncoder, DualEncoderConfig
from ocellus.models.families.vit.checkpoint import vision_rules
from ocellus.models.text.clip_text import ProjectedText, TextTowerConfig, TextTransformer
from ocellus.models.vision.vit import ViTConfig, VisionTransformer

MODEL_TYPES = ("clip", "clip_text_model")
_POSITION_IDS = r"(^|\.)embeddings\.position_ids$"   # a non-persistent arange some exports carry


def text_rules(ours: str, theirs: str) -> tuple[tuple[str, str], ...]:
    """The text tower's blocks, embeddings and head are named like the image tower's (same
    EncoderBlock); it adds final_layer_norm."""
    return vision_rules(ours, theirs) + ((f"{ours}final_layer_norm.{{rest}}", f"{theirs}final_layer_norm.{{rest}}"),)


def _own(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


DUAL_KEYS = KeyMap(rules=vision_rules("vision_model.", "vision_model.") + text_rules("text_model.", "text_model.")
                   + _own("visual_projection.weight", "text_projection.weight", "logit_scale", "logit_bias"),
                   drop=(_POSITION_IDS,))
# CLIPTextModel / SiglipTextModel: transformers 5 writes the tower unprefixed (4.x: `text_model.`); both load
TEXT_KEYS = KeyMap(rules=text_rules("", "") + text_rules("", "text_model."), drop=(_POSITION_IDS,))
PROJECTED_TEXT_KEYS = KeyMap(rules=text_rules("text_model.", "text_model.") + _own("text_projection.weight"),
                             drop=(_POSITION_IDS,))


def build_clip(cfg: dict) -> DualEncoder:
    """A CLIPModel config.json dict -> DualEncoder (random init unless the loader skips it)."""
    dual = DualEncoderConfig(loss="infonce", projection_dim=int(cfg.get("projection_dim", 512)),
                             logit_scale_init=float(cfg.get("logit_scale_init_value", 2.6592)), hf=dict(cfg))
    return DualEncoder(VisionTransformer(ViTConfig.from_hf(cfg)), TextTransformer(TextTowerConfig.from_hf(cfg)), dual)


def towers_hf_config(model: DualEncoder, model_type: str, architecture: str) -> dict:
    """config.json of a CLIPModel / SiglipModel: source config, our towers' configs over it."""
    if model.vision_model.config.hf_kind() != f"{model_type}_vision_model" or model.text_model.config.kind != \
            f"{model_type}_text_model":
        raise ConfigError(f"a {architecture} needs {model_type} towers; this model has a "
                          f"{model.vision_model.config.hf_kind()} and a {model.text_model.config.kind}")
    strip = lambda c: {k: v for k, v in c.items() if k != "architectures"}   # noqa: E731
    out = {k: v for k, v in model.config.hf.items() if k not in ("architectures", "torch_dtype")}
    out.update(architectures=[architecture], model_type=model_type, text_config=strip(model.text_model.config.to_hf()),
               vision_config=strip(model.vision_model.config.to_hf()))
    return out


def clip_hf_config(model: DualEncoder) -> dict:
    out = towers_hf_config(model, "clip", "CLIPModel")
    if model.config.projection_dim is None or model.logit_bias is not None:
        raise ConfigError("a CLIPModel has projections and no logit_bias")
    out.update(projection_dim=model.config.projection_dim,
               logit_scale_init_value=float(out.get("logit_scale_init_value", model.config.logit_scale_init)))
    return out


def build_clip_text(cfg: dict) -> TextTransformer:
    return TextTransformer(TextTowerConfig.from_hf(cfg))


def build_clip_text_projected(cfg: dict) -> ProjectedText:
    return ProjectedText(TextTransformer(TextTowerConfig.from_hf(cfg)), int(cfg.get("projection_dim", 512)))


def projected_text_hf_config(model: ProjectedText) -> dict:
    out = model.text_model.config.to_hf()
    out.update(architectures=["CLIPTextModelWithProjection"], projection_dim=model.text_projection.out_features)
    return out


def family(architecture: str):
    """The Family of one architecture (the registry, hub/families.py): CLIPModel, CLIPTextModel, CLIPTextModelWithProjection."""
    return {"CLIPModel": Family(name="clip", model_class=DualEncoder, build=build_clip, keymap=DUAL_KEYS,
                                hf_config=clip_hf_config),
            "CLIPTextModel": Family(name="clip_text", model_class=TextTransformer, build=build_clip_text,
                                    keymap=TEXT_KEYS, hf_config=lambda m: m.config.to_hf()),
            "CLIPTextModelWithProjection": Family(name="clip_text_projected", model_class=ProjectedText,
                                                  build=build_clip_text_projected, keymap=PROJECTED_TEXT_KEYS,
                                                  hf_config=projected_text_hf_config)}[architecture]
