"""Qwen-VL (v1; Bai et al. 2023, "Qwen-VL: A Versatile Vision-Language Model for Understanding,
Localization, Text Reading, and Beyond"): a ViT, the position-aware adapter that compresses its
patches to a fixed number of tokens (connectors/resampler.py; 256 in the paper), and a decoder,
early fusion. Images are written as in QwenLM/Qwen-VL's tokenizer,
    "Picture 1: <img>" + image tokens + "</img>\\n"   (numbered per sample, for multi-image prompts)
and grounding as text: "<ref>red circle</ref><box>(x1,y1),(x2,y2)</box>", corners in [0, 1000)
(the shapes BPE has <ref>, </ref>, <box>, </box> as special tokens; see ocellus/eval/grounding.py).

No transformers class exists for Qwen-VL v1 (its hub checkpoints run remote code), so this is our
own layout: architecture "OcellusQwenVLForConditionalGeneration", model_type "ocellus_qwen_vl";
config.json = vision_config (a CLIPVisionConfig / SiglipVisionConfig), text_config (Llama / Qwen2),
image_token_id, vision_feature_layer, resampler {num_queries, num_heads}, tie_word_embeddings. Tensor
names: checkpoint.py; the processor (image markup, a fixed token count per image): processor.py.
"""
from __future__ import annotations

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.models.connectors.resampler import Resampler
from ocellus.models.families.common import image_token_id, part_dirs, text_config
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.vlm import VLM

MODEL_TYPES = ("ocellus_qwen_vl",)
ARCHITECTURE = "OcellusQwenVLForConditionalGeneration"


def build_qwen_vl(cfg: dict) -> VLM:
    for key in ("vision_config", "text_config", "image_token_id"):
        if cfg.get(key) is None:
            raise ConfigError(f"Qwen-VL config.json has no {key}")
    text = {**text_config(cfg, "Qwen-VL", default="qwen2"),
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", cfg["text_config"].get("tie_word_embeddings")))}
    vision = VisionTransformer(ViTConfig.from_hf(cfg["vision_config"]))
    decoder = DecoderLM(DecoderConfig.from_hf(text))
    spec = cfg.get("resampler") or {}
    resampler = Resampler(vision.config.hidden_size, decoder.config.hidden_size,
                          num_queries=int(spec.get("num_queries", 256)), num_heads=int(spec.get("num_heads", 8)),
                          pos_scale=spec.get("pos_scale", 1.0))
    layer = cfg.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ConfigError(f"Qwen-VL vision_feature_layer must be one int, got {layer!r}")
    # "default" drops CLIP's CLS: the resampler's keys are the square grid of patches
    model = VLM(vision, resampler, decoder, image_token_id=int(cfg["image_token_id"]), feature_layer=layer,
                feature_select="default", config=decoder.config)
    model.hf_config = dict(cfg)
    return model


# ---- the recipe side (model.architecture: qwen_vl) -------------------------------------------------------
def compose(spec: dict, tok) -> VLM:
    """A recipe's Qwen-VL: the ViT of spec["vision_from"] + a new resampler (spec["resampler"]:
    num_queries, num_heads, pos_scale) + the decoder of spec["llm_from"]; feature_layer (-2), image_token (<image>)."""
    vision_dir, llm_dir = part_dirs(spec)
    text = read_config(llm_dir)
    resampler = spec.get("resampler") or {}
    cfg = {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPES[0], "vision_config": read_config(vision_dir),
           "text_config": text, "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
           "image_token_id": image_token_id(tok, spec), "vision_feature_layer": spec.get("feature_layer", -2),
           "resampler": {"num_queries": resampler.get("num_queries", 256), "num_heads": resampler.get("num_heads", 8)}}
    if "pos_scale" in resampler:      # written only when a recipe sets it: 1 (the paper) is the default
        cfg["resampler"]["pos_scale"] = resampler["pos_scale"]
    model = build_qwen_vl(cfg)
    model.family_name = "qwen_vl"
    model.vision_tower.load_state_dict(load_model(vision_dir).state_dict())
    model.language_model.load_state_dict(load_model(llm_dir).state_dict())
    return model
