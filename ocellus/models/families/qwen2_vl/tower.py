"""A Qwen2-VL / Qwen2.5-VL vision tower saved alone, no merger (Ocellus' own format, model_type ocellus_qwen2_vit):
config.json {model_type, variant, vision_config} + the tower's tensors under the names transformers gives them
after `visual.`. Task vit_classify writes one (recipes/qwen2_vl_tiny_shapes/vit.yaml's scene ViT); a qwen2_vl /
qwen2_5_vl recipe's vision_from reads it (modeling.compose)."""
from __future__ import annotations

from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import save_model
from ocellus.hub.families import OWN_NAMES, Family
from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig, Qwen2VisionTransformer, VARIANTS

MODEL_TYPE = "ocellus_qwen2_vit"


def build_tower(cfg: dict) -> Qwen2VisionTransformer:
    """config.json -> the tower (weights not loaded)."""
    if cfg.get("variant") not in VARIANTS or not isinstance(cfg.get("vision_config"), dict):
        raise ConfigError(f"a {MODEL_TYPE} config.json needs variant (one of {VARIANTS}) and a vision_config "
                          f"mapping, got variant={cfg.get('variant')!r}, vision_config={cfg.get('vision_config')!r}")
    return Qwen2VisionTransformer(Qwen2VisionConfig.from_hf(cfg["vision_config"], cfg["variant"]))


def tower_config(model: Qwen2VisionTransformer) -> dict:
    return {"model_type": MODEL_TYPE, "variant": model.config.variant, "vision_config": model.config.to_hf()}


def family(architecture: str | None = None) -> Family:
    """The hub Family of a tower saved alone (hub/families.py registers it as qwen2_vit)."""
    return Family(name="qwen2_vit", model_class=Qwen2VisionTransformer, build=build_tower, keymap=OWN_NAMES,
                  hf_config=tower_config)


def save_tower(model: Qwen2VisionTransformer, out_dir) -> Path:
    """Write the tower alone (ocellus.save's one path). The family is named, so saving finds it first instead of
    importing every registered family's checkpoint module looking for the one that builds the class."""
    if not isinstance(model, Qwen2VisionTransformer):
        raise ConfigError(f"save_tower takes a Qwen2VisionTransformer, got {type(model).__name__}")
    model.family_name = "qwen2_vit"
    return save_model(model, out_dir)
