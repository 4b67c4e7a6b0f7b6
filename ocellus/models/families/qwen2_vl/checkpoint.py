"""Qwen2-VL / Qwen2.5-VL checkpoints: the hub layout (model.layers.*, visual.*, lm_head; what transformers
5.23's save_pretrained writes, and what we write) and transformers 5's in-memory layout (model.language_model.*,
model.visual.*), read only; config.json back in the nested (text_config) layout."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.common import tied_lm_head, two_layouts
from ocellus.models.families.qwen2_vl.modeling import ARCHS, Qwen2VL, build_qwen2_vl

# the hub layout keeps the decoder's body at the top (model.*), not under language_model.model.
QWEN2_VL_KEYS = KeyMap(
    rules=two_layouts((("merger.{rest}", "visual.merger.{rest}"), ("visual.{rest}", "visual.{rest}")),
                      "model.", "lm_head.weight"),
    drop=(r"rotary_emb\.inv_freq$", r"rotary_pos_emb\.inv_freq$"),
)


def qwen2_vl_hf_config(model: Qwen2VL) -> dict:
    variant = model.variant
    text = model.language_model.config.to_hf()
    for key in ("architectures", "tie_word_embeddings", "head_dim"):
        text.pop(key, None)
    text["model_type"] = f"{variant}_text"
    out = {k: v for k, v in model.hf_config.items() if k not in ("rope_scaling", "rope_theta")}
    if "text_config" not in model.hf_config:  # 4.x flat layout read: write the nested one
        out = {k: v for k, v in out.items() if k in ("vision_config", "transformers_version")}
    out.update(architectures=[ARCHS[variant]], model_type=variant, text_config=text,
               vision_config=model.visual.config.to_hf(),
               tie_word_embeddings=model.language_model.config.tie_word_embeddings,
               image_token_id=model.tokens.image, video_token_id=model.tokens.video,
               vision_start_token_id=model.tokens.vision_start, vision_end_token_id=model.tokens.vision_end)
    return out


def family(architecture: str | None = None):
    """The hub Family serving both architectures (hub/families.py registers it)."""
    return Family(name="qwen2_vl", model_class=Qwen2VL, build=build_qwen2_vl, keymap=QWEN2_VL_KEYS,
                  hf_config=qwen2_vl_hf_config, tied=tied_lm_head)
