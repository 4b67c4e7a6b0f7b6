"""Qwen-VL checkpoints (our own layout): the ViT's names under vision_tower.vision_model. (CLIPVisionModel's),
the decoder's under language_model.model. / language_model.lm_head (LLaVA's hub layout), the adapter's as in
the module (multi_modal_projector.query, .attn.in_proj_weight, ..., Qwen-VL's visual.attn_pool names)."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.vit.checkpoint import vision_rules
from ocellus.models.families.common import tied_lm_head
from ocellus.models.families.decoder.checkpoint import decoder_rules
from ocellus.models.families.qwen_vl.modeling import ARCHITECTURE, MODEL_TYPES, build_qwen_vl
from ocellus.models.vlm import VLM

QWEN_VL_KEYS = KeyMap(
    rules=(
        *vision_rules("vision_tower.", "vision_tower.vision_model."),
        ("multi_modal_projector.{rest}", "multi_modal_projector.{rest}"),
        *decoder_rules("language_model.", "language_model.model.", "language_model.lm_head.weight"),
    ),
    drop=(r"(^|\.)embeddings\.position_ids$", r"rotary_emb\.inv_freq$"),
)


def qwen_vl_hf_config(model: VLM) -> dict:
    text = model.language_model.config.to_hf()
    text.pop("architectures", None)
    r = model.multi_modal_projector
    resampler = {"num_queries": r.num_queries, "num_heads": r.num_heads}
    if r.pos_scale != 1.0:                  # the paper's 1 stays implicit, as in configs written before the knob
        resampler["pos_scale"] = r.pos_scale
    return {**(getattr(model, "hf_config", None) or {}), "architectures": [ARCHITECTURE], "model_type": MODEL_TYPES[0],
            "vision_config": model.vision_tower.config.to_hf(), "text_config": text,
            "image_token_id": model.image_token_id, "vision_feature_layer": model.feature_layer,
            "resampler": resampler, "tie_word_embeddings": text["tie_word_embeddings"]}


def family(architecture: str | None = None):
    """The hub Family (ocellus/hub/families.py)."""
    return Family(name="qwen_vl", model_class=VLM, build=build_qwen_vl, keymap=QWEN_VL_KEYS,
                  hf_config=qwen_vl_hf_config,
                  tied=tied_lm_head)
