"""xGen-MM checkpoints (our own format, modeling.py): tensor names follow Salesforce's modeling_xgenmm.py
(XGenMMModelForConditionalGeneration, whose `vlm` holds vision_encoder / vision_tokenizer / lang_model):

    ours                                          checkpoint
    vision_tower.<ViT>                            vlm.vision_encoder.<ViT as CLIP/SigLIP's vision_model>
    packer.perceiver.latents                      vlm.vision_tokenizer.latents
    packer.perceiver.layers.{i}.attn.*            vlm.vision_tokenizer.layers.{i}.0.*  (norm_media, norm_latents,
                                                                                       to_q, to_kv, to_out)
    packer.perceiver.layers.{i}.ff.norm / .mlp.fc1 / .mlp.fc2
                                                  vlm.vision_tokenizer.layers.{i}.1.0 / .1.1 / .1.3  (nn.Sequential)
    packer.perceiver.norm, packer.projection      vlm.vision_tokenizer.norm, vlm.vision_tokenizer.projection
    language_model.<decoder>                      vlm.lang_model.model.* , vlm.lang_model.lm_head.weight

The names match; the hub's weights themselves do not load: its Phi-3 decoder fuses qkv_proj / gate_up_proj and
its decoupled embeddings keep the added tokens' rows apart (additional_embedding, additional_fc), which this
Llama-style decoder does not read (a strict load names those keys)."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.vit.checkpoint import vision_rules
from ocellus.models.families.common import tied_lm_head
from ocellus.models.families.decoder.checkpoint import decoder_rules
from ocellus.models.families.xgen_mm.modeling import ARCHITECTURE, MODEL_TYPES, build_xgen_mm
from ocellus.models.vlm import VLM

_T = "vlm.vision_tokenizer."
XGEN_MM_KEYS = KeyMap(
    rules=(
        *vision_rules("vision_tower.", "vlm.vision_encoder."),
        ("packer.perceiver.latents", _T + "latents"),
        ("packer.perceiver.layers.{i}.attn.{rest}", _T + "layers.{i}.0.{rest}"),
        ("packer.perceiver.layers.{i}.ff.norm.{rest}", _T + "layers.{i}.1.0.{rest}"),
        ("packer.perceiver.layers.{i}.ff.mlp.fc1.{rest}", _T + "layers.{i}.1.1.{rest}"),
        ("packer.perceiver.layers.{i}.ff.mlp.fc2.{rest}", _T + "layers.{i}.1.3.{rest}"),
        ("packer.perceiver.norm.{rest}", _T + "norm.{rest}"),
        ("packer.projection.{rest}", _T + "projection.{rest}"),
        *decoder_rules("language_model.", "vlm.lang_model.model.", "vlm.lang_model.lm_head.weight"),
    ),
    drop=(r"(^|\.)embeddings\.position_ids$", r"rotary_emb\.inv_freq$"),
)


def xgen_mm_hf_config(model: VLM) -> dict:
    text = model.language_model.config.to_hf()
    text.pop("architectures", None)
    sampler = model.packer.perceiver.config.to_dict()
    for key in ("dim", "max_num_frames", "max_num_patches"):   # the tower's width; still views; no patch positions
        sampler.pop(key)
    return {**(getattr(model, "hf_config", None) or {}), "architectures": [ARCHITECTURE], "model_type": MODEL_TYPES[0],
            "vision_config": model.vision_tower.config.to_hf(), "text_config": text,
            "vision_tokenizer_config": sampler,
            "image_grid_pinpoints": [list(p) for p in model.packer.grid_pinpoints],
            "image_token_index": model.image_token_id, "vision_feature_layer": model.feature_layer,
            "vision_feature_select_strategy": model.feature_select,
            "tie_word_embeddings": bool(text.get("tie_word_embeddings", False))}


def family(architecture: str | None = None) -> Family:
    """The hub Family (ocellus/hub/families.py) of OcellusXGenMMForConditionalGeneration."""
    return Family(name="xgen_mm", model_class=VLM, build=build_xgen_mm, keymap=XGEN_MM_KEYS,
                  hf_config=xgen_mm_hf_config, tied=tied_lm_head)
