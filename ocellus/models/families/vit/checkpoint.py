"""Checkpoint I/O for the CLIP and SigLIP image towers (ocellus/models/vision/vit.py): the registry's Family.

One key table serves both: SigLIP's checkpoint is CLIP's minus class_embedding/pre_layrnorm plus a
`head`, and our module names equal transformers' except three places the table maps:
    pre_layernorm            <-> pre_layrnorm               (transformers' spelling)
    layers.{i}               <-> encoder.layers.{i}
    layers.{i}.self_attn.o_proj <-> encoder.layers.{i}.self_attn.out_proj
Checkpoints name these with a `vision_model.` prefix (transformers 4.x, hub CLIP/SigLIP models, vLLM)
or without it (what transformers 5 writes); both load. We save with the prefix, which every one of
those readers accepts. Full CLIPModel / SiglipModel checkpoints load too: the text tower and the
projections are dropped explicitly.

ocellus.load / ocellus.save reach the towers through the registry (hub/families.py: CLIPVisionModel,
SiglipVisionModel -> `family` below); load_vision / save_vision are thin wrappers over the same strict path
(hub/checkpoint.py). `vision_rules` is every composite family's ViT naming (LLaVA, CLIP's dual encoder, ...).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config, save_model
from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.hub.resolve import resolve
from ocellus.models.vision.vit import VisionTransformer, ViTConfig

MODEL_TYPES = ("clip_vision_model", "siglip_vision_model")
VISION_ARCHITECTURES = ("CLIPVisionModel", "SiglipVisionModel")   # one ViT family, one key table
CONTRASTIVE_ARCHITECTURES = ("CLIPModel", "SiglipModel")   # load_vision takes their image tower only


def vision_rules(ours: str = "", theirs: str = "vision_model.") -> tuple[tuple[str, str], ...]:
    """(ours, theirs) rules for one ViT tower; prefixes let composite models (LLaVA's
    `vision_tower.` <-> `model.vision_tower.`) reuse them."""
    return (
        (f"{ours}embeddings.{{rest}}", f"{theirs}embeddings.{{rest}}"),
        (f"{ours}pre_layernorm.{{rest}}", f"{theirs}pre_layrnorm.{{rest}}"),
        (f"{ours}layers.{{i}}.self_attn.o_proj.{{rest}}", f"{theirs}encoder.layers.{{i}}.self_attn.out_proj.{{rest}}"),
        (f"{ours}layers.{{i}}.{{rest}}", f"{theirs}encoder.layers.{{i}}.{{rest}}"),
        (f"{ours}post_layernorm.{{rest}}", f"{theirs}post_layernorm.{{rest}}"),
        (f"{ours}head.{{rest}}", f"{theirs}head.{{rest}}"),
    )


# older exports carry the non-persistent position_ids buffer; it is arange(), rebuilt on the fly
_POSITION_IDS = r"(^|\.)embeddings\.position_ids$"

# first rule wins when saving: the prefixed form
VISION_KEYS = KeyMap(rules=vision_rules("", "vision_model.") + vision_rules("", ""), drop=(_POSITION_IDS,))

# a CLIPModel / SiglipModel checkpoint seen as its image tower: everything text-side is dropped on purpose
VISION_FROM_CONTRASTIVE_KEYS = KeyMap(
    rules=VISION_KEYS.rules,
    drop=(_POSITION_IDS, r"^text_model\.", r"^visual_projection\.", r"^text_projection\.", r"^logit_scale$",
          r"^logit_bias$"),
)


def build_vision(cfg: dict) -> VisionTransformer:
    return VisionTransformer(ViTConfig.from_hf(cfg))


def family(architecture: str | None = None) -> Family:
    """The Family for CLIPVisionModel and SiglipVisionModel checkpoints (one table serves both;
    config.json says which, and `to_hf` writes the right one back)."""
    return Family(name="vit", model_class=VisionTransformer, build=build_vision, keymap=VISION_KEYS,
                  hf_config=lambda m: m.config.to_hf())


def load_vision(path_or_id, dtype=None, device=None):
    """A CLIPVisionModel / SiglipVisionModel checkpoint dir (or the image tower of a CLIPModel /
    SiglipModel one) -> VisionTransformer, strictly (hub/checkpoint.load_model, the one load path): every
    tensor used or explicitly dropped."""
    path = resolve(path_or_id)
    cfg = read_config(path)
    archs = cfg.get("architectures") or []
    if any(a in VISION_ARCHITECTURES for a in archs):
        keymap = VISION_KEYS
    elif any(a in CONTRASTIVE_ARCHITECTURES for a in archs):
        keymap = VISION_FROM_CONTRASTIVE_KEYS
    else:
        raise ConfigError(f"{path / 'config.json'}: architectures {archs or '(none given)'} is not a vision tower; "
                          f"supported: {sorted(VISION_ARCHITECTURES + CONTRASTIVE_ARCHITECTURES)}")
    return load_model(path, dtype=dtype, device=device, family=replace(family(), keymap=keymap))


def save_vision(model, out_dir, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write a CLIPVisionModel / SiglipVisionModel checkpoint (config.json + safetensors) that
    transformers' from_pretrained opens (hub/checkpoint.save_model, the one save path)."""
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"save_vision takes a VisionTransformer, got {type(model).__name__}")
    return save_model(model, out_dir, max_shard_bytes=max_shard_bytes)


def register(architectures: dict) -> dict:
    """Add the vision towers to a `hub.families.ARCHITECTURES`-style dict (returned for chaining)."""
    fam = family()
    for name in VISION_ARCHITECTURES:
        architectures[name] = fam
    return architectures
