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
image_token_id, vision_feature_layer, resampler {num_queries, num_heads}, tie_word_embeddings.
Tensor names: the ViT's under vision_tower.vision_model. (CLIPVisionModel's), the decoder's under
language_model.model. / language_model.lm_head (LLaVA's hub layout), the adapter's as in the module
(multi_modal_projector.query, .attn.in_proj_weight, ..., Qwen-VL's visual.attn_pool names).
"""
from __future__ import annotations

import functools
from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.hub.vision_families import vision_rules
from ocellus.models.connectors.resampler import Resampler
from ocellus.models.families.llava import _decoder_rules, _part_dirs, image_token_id
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.vlm import VLM
from ocellus.data.image import ImageProcessorConfig, preprocess
from ocellus.data.processor import _read_json, image_processor_dict, Processor
from ocellus.data.tokenizer import Tokenizer

MODEL_TYPES = ("ocellus_qwen_vl",)
ARCHITECTURE = "OcellusQwenVLForConditionalGeneration"
IMAGE_WRAP = ("Picture {n}: <img>", "</img>\n")     # Qwen-VL's image markup; {n} numbers images per sample

QWEN_VL_KEYS = KeyMap(
    rules=(
        *vision_rules("vision_tower.", "vision_tower.vision_model."),
        ("multi_modal_projector.{rest}", "multi_modal_projector.{rest}"),
        *_decoder_rules("language_model.", "language_model.model.", "language_model.lm_head.weight"),
    ),
    drop=(r"(^|\.)embeddings\.position_ids$", r"rotary_emb\.inv_freq$"),
)


def build_qwen_vl(cfg: dict) -> VLM:
    for key in ("vision_config", "text_config", "image_token_id"):
        if cfg.get(key) is None:
            raise ConfigError(f"Qwen-VL config.json has no {key}")
    text = {"model_type": "qwen2", **cfg["text_config"],
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", cfg["text_config"].get("tie_word_embeddings")))}
    if text["model_type"] not in ("qwen2", "llama"):
        raise ConfigError(f"Qwen-VL text_config.model_type {text['model_type']!r} is not a supported decoder "
                          f"(qwen2, llama)")
    vision = VisionTransformer(ViTConfig.from_hf(cfg["vision_config"]))
    decoder = DecoderLM(DecoderConfig.from_hf(text))
    spec = cfg.get("resampler") or {}
    resampler = Resampler(vision.config.hidden_size, decoder.config.hidden_size,
                          num_queries=int(spec.get("num_queries", 256)), num_heads=int(spec.get("num_heads", 8)))
    layer = cfg.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ConfigError(f"Qwen-VL vision_feature_layer must be one int, got {layer!r}")
    # "default" drops CLIP's CLS: the resampler's keys are the square grid of patches
    model = VLM(vision, resampler, decoder, image_token_id=int(cfg["image_token_id"]), feature_layer=layer,
                feature_select="default", config=decoder.config)
    model.hf_config = dict(cfg)
    return model


def qwen_vl_hf_config(model: VLM) -> dict:
    text = model.language_model.config.to_hf()
    text.pop("architectures", None)
    r = model.multi_modal_projector
    return {**(getattr(model, "hf_config", None) or {}), "architectures": [ARCHITECTURE], "model_type": MODEL_TYPES[0],
            "vision_config": model.vision_tower.config.to_hf(), "text_config": text,
            "image_token_id": model.image_token_id, "vision_feature_layer": model.feature_layer,
            "resampler": {"num_queries": r.num_queries, "num_heads": r.num_heads},
            "tie_word_embeddings": text["tie_word_embeddings"]}


def family():
    """The hub Family (ocellus/hub/families.py)."""
    return Family(name="qwen_vl", model_class=VLM, build=build_qwen_vl, keymap=QWEN_VL_KEYS,
                  hf_config=qwen_vl_hf_config,
                  tied=lambda m: ("language_model.lm_head.weight",) if m.language_model.config.tie_word_embeddings
                  else ())


# ---- the recipe / processor side (models/families/registry.py) -----------------------------------

def compose(spec: dict, tok) -> VLM:
    """A recipe's Qwen-VL: the ViT of spec["vision_from"] + a new resampler (spec["resampler"]:
    num_queries, num_heads) + the decoder of spec["llm_from"]; feature_layer (-2), image_token (<image>)."""
    vision_dir, llm_dir = _part_dirs(spec)
    text = read_config(llm_dir)
    resampler = spec.get("resampler") or {}
    cfg = {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPES[0], "vision_config": read_config(vision_dir),
           "text_config": text, "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
           "image_token_id": image_token_id(tok, spec), "vision_feature_layer": spec.get("feature_layer", -2),
           "resampler": {"num_queries": resampler.get("num_queries", 256), "num_heads": resampler.get("num_heads", 8)}}
    model = build_qwen_vl(cfg)
    model.family_name = "qwen_vl"
    model.vision_tower.load_state_dict(load_model(vision_dir).state_dict())
    model.language_model.load_state_dict(load_model(llm_dir).state_dict())
    return model


def _qwen_vl_image_inputs(images, *, image_config, num_queries: int):
    """Loaded images -> ({"pixel_values": [N, 3, S, S]}, num_queries tokens per image)."""
    return {"pixel_values": preprocess(images, image_config, max_pixels=None)}, [num_queries] * len(images)


def make_processor(tok, image_config, num_queries: int, image_token: str, chat_template=None):
    image_inputs = functools.partial(_qwen_vl_image_inputs, image_config=image_config, num_queries=num_queries)
    return Processor(tok, image_config, patch_size=1, image_token=image_token, chat_template=chat_template,
                     image_inputs=image_inputs, image_wrap=IMAGE_WRAP)


def training_processor(model: VLM, tok, image_config):
    return make_processor(tok, image_config, model.multi_modal_projector.num_queries,
                          tok.convert_ids_to_tokens(model.image_token_id))


def processor_from_dir(directory):
    """config.json (image_token_id, resampler.num_queries) + preprocessor_config.json + the tokenizer."""
    directory = Path(directory)
    cfg, image_dict = _read_json(directory / "config.json"), image_processor_dict(directory)
    if cfg is None or image_dict is None:
        raise ConfigError(f"{directory}: a Qwen-VL processor needs config.json and preprocessor_config.json")
    tok = Tokenizer.from_dir(directory)
    image_token = tok.convert_ids_to_tokens(int(cfg["image_token_id"]))
    if image_token is None:
        raise ConfigError(f"{directory}: config.json's image_token_id {cfg['image_token_id']} is not in the tokenizer")
    return make_processor(tok, ImageProcessorConfig.from_dict(image_dict),
                          int((cfg.get("resampler") or {}).get("num_queries", 256)), image_token)
