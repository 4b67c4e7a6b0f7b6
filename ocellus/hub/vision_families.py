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
below go through the same table, so this module imports no model class.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ocellus.errors import CheckpointError, ConfigError
from ocellus.hub.checkpoint import _skip_init, load_state_strict, parse_dtype, read_config
from ocellus.hub.families import ARCHITECTURES, VISION_ARCHITECTURES, resolve_family
from ocellus.hub.keymap import KeyMap
from ocellus.hub.resolve import resolve
from ocellus.hub.safetensors_io import _atomic_write_text, checkpoint_files, read_tensors, write_tensors

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
    """The ViT family of the hub table (models/vision/vit.family), imported on first use."""
    return resolve_family(ARCHITECTURES[VISION_ARCHITECTURES[0]])


def load_vision(path_or_id, dtype=None, device=None):
    """A CLIPVisionModel / SiglipVisionModel checkpoint dir (or the image tower of a CLIPModel /
    SiglipModel one) -> VisionTransformer, strictly: every tensor used or explicitly dropped."""
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
    dtype = parse_dtype(dtype) or parse_dtype(cfg.get("dtype") or cfg.get("torch_dtype")) or torch.float32
    with _skip_init(dtype):
        model = _vision_family().build(cfg)
    load_state_strict(model, read_tensors(checkpoint_files(path)), keymap, source=str(path))
    model.eval()
    model.name_or_path = str(path_or_id)
    return model.to(device) if device is not None else model


def save_vision(model, out_dir, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write a CLIPVisionModel / SiglipVisionModel checkpoint (config.json + safetensors) that
    transformers' from_pretrained opens."""
    if not isinstance(model, _vision_family().model_class):
        raise ConfigError(f"save_vision takes a VisionTransformer, got {type(model).__name__}")
    cfg = model.config.to_hf()   # first: raises ConfigError for a layout transformers cannot express
    tensors = {}
    for k, t in model.state_dict().items():
        name = VISION_KEYS.to_theirs(k)
        if name is None:
            raise CheckpointError(f"VisionTransformer.{k} has no checkpoint name in the vision key table")
        tensors[name] = t.detach().cpu()
    out = Path(out_dir)
    write_tensors(tensors, out, max_shard_bytes=max_shard_bytes)
    cfg["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    _atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, sort_keys=True))
    return out


__all__ = ["VISION_KEYS", "VISION_FROM_CONTRASTIVE_KEYS", "vision_rules", "load_vision", "save_vision"]
