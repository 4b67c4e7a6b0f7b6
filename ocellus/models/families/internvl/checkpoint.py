"""InternVL checkpoints: the key table (transformers' hub layout, and its in-memory one read only) and
config.json (InternVLForConditionalGeneration, or ours for a recipe's CLIP tower)."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.vit.checkpoint import vision_rules
from ocellus.models.families.common import tied_lm_head, two_layouts
from ocellus.models.families.internvl.modeling import (
    HF_ARCHITECTURE, OCELLUS_ARCHITECTURE, build_internvl, tokens_per_tile)
from ocellus.models.vision.intern_vit import InternViT
from ocellus.models.vlm import VLM

_INTERN_VIT = ("embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings",
               "embeddings.patch_embeddings.{rest}", "encoder.{rest}", "layernorm.{rest}")

# InternViT names are transformers' own; a recipe's CLIP tower (ocellus_internvl, a format of ours that
# transformers never holds in memory) uses the CLIPVisionModel names under vision_tower., in the hub layout only
_PARTS = (*((f"vision_tower.{k}", f"vision_tower.{k}") for k in _INTERN_VIT),
          ("multi_modal_projector.norm.{rest}", "multi_modal_projector.layer_norm.{rest}"),
          ("multi_modal_projector.{rest}", "multi_modal_projector.{rest}"))
INTERNVL_KEYS = KeyMap(
    rules=(*two_layouts(_PARTS, "language_model.model.", "language_model.lm_head.weight"),
           *vision_rules("vision_tower.", "vision_tower.vision_model.")),
    drop=(r"(^|\.)embeddings\.position_ids$", r"rotary_emb\.inv_freq$"),
)


def internvl_hf_config(model: VLM) -> dict:
    out = dict(getattr(model, "hf_config", {}) or {})
    vision = model.vision_tower
    hf_tower = isinstance(vision, InternViT)
    text = model.language_model.config.to_hf()
    text.pop("architectures", None)
    out.update(architectures=[HF_ARCHITECTURE if hf_tower else OCELLUS_ARCHITECTURE],
               model_type="internvl" if hf_tower else "ocellus_internvl",
               vision_config=vision.config.to_hf(), text_config=text, image_token_id=model.image_token_id,
               downsample_ratio=1 / model.multi_modal_projector.ratio, vision_feature_layer=model.feature_layer,
               vision_feature_select_strategy=model.feature_select, tie_word_embeddings=text["tie_word_embeddings"])
    out["image_seq_length"] = tokens_per_tile(out)   # transformers' name for the context tokens per tile
    return out


def family(architecture: str | None = None):
    """The hub Family (ocellus/hub/families.py) for both InternVL architectures."""
    return Family(name="internvl", model_class=VLM, build=build_internvl, keymap=INTERNVL_KEYS,
                  hf_config=internvl_hf_config,
                  tied=tied_lm_head)
