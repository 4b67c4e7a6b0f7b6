"""Checkpoint I/O for the CLIP and SigLIP image towers (ocellus/models/vision/vit.py).

One key table serves both: SigLIP's checkpoint is CLIP's minus class_embedding/pre_layrnorm plus a
`head`, and our module names equal transformers' except three places the table maps:
    pre_layernorm            <-> pre_layrnorm               (transformers' spelling)
    layers.{i}               <-> encoder.layers.{i}
    layers.{i}.self_attn.o_proj <-> encoder.layers.{i}.self_attn.out_proj
Checkpoints name these with a `vision_model.` prefix (transformers 4.x, hub CLIP/SigLIP models, vLLM)
or without it (what transformers 5 writes); both load. We save with the prefix, which every one of
those readers accepts. Full CLIPModel / SiglipModel checkpoints load too: the text tower and the
projections are dropped explicitly.

ocellus.load / ocellus.save reach the towers through hub/families.py's table (CLIPVisionModel,
SiglipVisionModel -> models/vision/vit.family, which builds with VISION_KEYS); load_vision / save_vision
below are thin wrappers over the same strict path (hub/checkpoint.py), so this module imports no model class.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config, save_model
from ocellus.hub.families import ARCHITECTURES, VISION_ARCHITECTURES, resolve_family
from ocellus.hub.keymap import KeyMap
from ocellus.hub.resolve import resolve

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


def _vision_family():
    """The ViT family of the registry (models/vision/vit.family), imported on first use."""
    return resolve_family(ARCHITECTURES[VISION_ARCHITECTURES[0]])


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
    return load_model(path, dtype=dtype, device=device, family=replace(_vision_family(), keymap=keymap))


def save_vision(model, out_dir, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write a CLIPVisionModel / SiglipVisionModel checkpoint (config.json + safetensors) that
    transformers' from_pretrained opens (hub/checkpoint.save_model, the one save path)."""
    if not isinstance(model, _vision_family().model_class):
        raise ConfigError(f"save_vision takes a VisionTransformer, got {type(model).__name__}")
    return save_model(model, out_dir, max_shard_bytes=max_shard_bytes)


__all__ = ["VISION_KEYS", "VISION_FROM_CONTRASTIVE_KEYS", "vision_rules", "load_vision", "save_vision"]
