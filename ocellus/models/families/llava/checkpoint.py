"""LLaVA checkpoints: the key table and the config.json writer (the registry's Family).

Checkpoint names come in two layouts, both loaded: the hub's (vision_tower.vision_model.*,
language_model.model.*, language_model.lm_head) and transformers 5's in-memory one
(model.vision_tower.*, model.language_model.*, lm_head). We save the hub layout.
"""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.vit.checkpoint import vision_rules
from ocellus.models.families.common import tied_lm_head, two_layouts
from ocellus.models.families.llava.modeling import build_llava
from ocellus.models.vlm import VLM

LLAVA_KEYS = KeyMap(
    rules=(
        *two_layouts((*vision_rules("vision_tower.", "vision_tower.vision_model."),
                      ("multi_modal_projector.{rest}", "multi_modal_projector.{rest}")),
                     "language_model.model.", "language_model.lm_head.weight"),
        # transformers 5 also names the tower without its vision_model. level; read only
        *vision_rules("vision_tower.", "vision_tower."),
        *vision_rules("vision_tower.", "model.vision_tower."),
    ),
    drop=(r"(^|\.)embeddings\.position_ids$", r"rotary_emb\.inv_freq$"),
)


def llava_hf_config(model: VLM) -> dict:
    out = dict(getattr(model, "hf_config", {}) or {})
    out.update(architectures=["LlavaForConditionalGeneration"], model_type="llava",
               image_token_index=model.image_token_id, vision_feature_layer=model.feature_layer,
               vision_feature_select_strategy=model.feature_select,
               vision_config=model.vision_tower.config.to_hf(), text_config=model.language_model.config.to_hf())
    out["text_config"].pop("architectures", None)
    # transformers 5 ties lm_head to the embeddings by the TOP-LEVEL flag (False when absent): without it a
    # tied decoder opens there with lm_head missing and re-initialised
    out["tie_word_embeddings"] = bool(out["text_config"].get("tie_word_embeddings", False))
    return out


def family(architecture: str | None = None) -> Family:
    """The hub Family (ocellus/hub/families.py) of LlavaForConditionalGeneration."""
    return Family(name="llava", model_class=VLM, build=build_llava, keymap=LLAVA_KEYS, hf_config=llava_hf_config,
                  tied=tied_lm_head)
