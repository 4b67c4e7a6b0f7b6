"""InternVL-1.5/2/3 (Chen et al. 2024, "How Far Are We to GPT-4V? Closing the Gap to Commercial
Multimodal Models with Open-Source Suites"): dynamic aspect-ratio tiling of each image into 448px
tiles (+ a thumbnail), an InternViT per tile, pixel shuffle (downsample_ratio 0.5: 2x2 patches ->
one token, 4x the channels), an MLP (LayerNorm + Linear + GELU + Linear) into a Qwen2/Llama
decoder, early fusion. Each image is written `<img>` + <IMG_CONTEXT> x (256 per tile) + `</img>`.

Matches transformers' InternVLForConditionalGeneration and InternVLProcessor
(tests/parity/test_internvl_parity.py). config.json: vision_config (InternVLVisionConfig),
text_config, image_token_id, downsample_ratio, projector_hidden_act, vision_feature_layer,
vision_feature_select_strategy, tie_word_embeddings (top-level, default True: it decides, not
text_config's). Optional InternVL-chat keys min_dynamic_patch / max_dynamic_patch / use_thumbnail
describe the tiling; transformers ignores them.

The model is the generic `VLM` (models/vlm.py): every tile is one "image" row of pixel_values
[sum tiles, 3, H, W]; its P patch features (CLS dropped) -> PixelShuffleProjector -> P/4 tokens.

A recipe's tiny InternVL (`compose`) keeps the CLIP ViT it was given instead of an InternViT; that
layout has no transformers class, so it is saved as "OcellusInternVLForConditionalGeneration"
(model_type "ocellus_internvl", vision_config a CLIPVisionConfig) and opens in Ocellus only.
"""
from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.hub.vision_families import vision_rules
from ocellus.models.connectors.pixel_shuffle import PixelShuffleProjector
from ocellus.models.families.llava import _decoder_rules, _part_dirs, image_token_id
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.intern_vit import InternViT, InternViTConfig
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.vlm import VLM
from ocellus.data.image import ImageProcessorConfig
from ocellus.data.image_tiling import internvl_num_tokens, preprocess_internvl
from ocellus.data.processor import _read_json, image_processor_dict, Processor
from ocellus.data.tokenizer import Tokenizer

MODEL_TYPES = ("internvl", "ocellus_internvl")
HF_ARCHITECTURE = "InternVLForConditionalGeneration"
OCELLUS_ARCHITECTURE = "OcellusInternVLForConditionalGeneration"   # CLIP tower: no transformers class
IMAGE_WRAP = ("<img>", "</img>")                                    # InternVLProcessor's start/end image tokens

_INTERN_VIT = ("embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings",
               "embeddings.patch_embeddings.{rest}", "encoder.{rest}", "layernorm.{rest}")

INTERNVL_KEYS = KeyMap(
    rules=(
        # the hub layout (what transformers' save_pretrained writes, and we write): InternViT names are
        # transformers' own; a CLIP tower (recipes) uses the CLIPVisionModel names under vision_tower.
        *((f"vision_tower.{k}", f"vision_tower.{k}") for k in _INTERN_VIT),
        *vision_rules("vision_tower.", "vision_tower.vision_model."),
        ("multi_modal_projector.norm.{rest}", "multi_modal_projector.layer_norm.{rest}"),
        ("multi_modal_projector.{rest}", "multi_modal_projector.{rest}"),
        *_decoder_rules("language_model.", "language_model.model.", "language_model.lm_head.weight"),
        # transformers 5's in-memory layout, read only
        *((f"vision_tower.{k}", f"model.vision_tower.{k}") for k in _INTERN_VIT),
        ("multi_modal_projector.norm.{rest}", "model.multi_modal_projector.layer_norm.{rest}"),
        ("multi_modal_projector.{rest}", "model.multi_modal_projector.{rest}"),
        *_decoder_rules("language_model.", "model.language_model.", "lm_head.weight"),
    ),
    drop=(r"(^|\.)embeddings\.position_ids$", r"rotary_emb\.inv_freq$"),
)


def _ratio(downsample_ratio: float) -> int:
    r = round(1 / float(downsample_ratio))
    if r < 1 or abs(r * float(downsample_ratio) - 1) > 1e-6:
        raise ConfigError(f"InternVL downsample_ratio must be 1/r for an integer r (0.5 folds 2x2 patches), "
                          f"got {downsample_ratio}")
    return r


def _tower_config(vision_cfg: dict) -> InternViTConfig | ViTConfig:
    """vision_config parsed with its own class's defaults: an InternViT, or a recipe's CLIP/SigLIP ViT."""
    kind = vision_cfg.get("model_type", "internvl_vision")
    if kind == "internvl_vision":
        return InternViTConfig.from_hf(vision_cfg)
    if kind in ("clip_vision_model", "siglip_vision_model"):
        return ViTConfig.from_hf(vision_cfg)
    raise ConfigError(f"InternVL vision_config.model_type {kind!r} is not supported (internvl_vision, "
                      f"clip_vision_model, siglip_vision_model)")


def tokens_per_tile(cfg: dict) -> int:
    """Context tokens one tile becomes, from config.json: (tile / patch)^2 * ratio^2 (256 for 448 / 14 / 0.5)."""
    vit = _tower_config(cfg["vision_config"])
    return internvl_num_tokens(1, tile_size=vit.image_size, patch_size=vit.patch_size,
                               downsample_ratio=1 / _ratio(cfg.get("downsample_ratio", 0.5)))


def build_internvl(cfg: dict) -> VLM:
    for key in ("vision_config", "text_config"):
        if not cfg.get(key):
            raise ConfigError(f"InternVL config.json has no {key}")
    text = dict(cfg["text_config"])
    text.setdefault("model_type", "qwen2")
    if text["model_type"] not in ("qwen2", "llama"):
        raise ConfigError(f"InternVL text_config.model_type {text['model_type']!r} is not a supported decoder "
                          f"(qwen2, llama)")
    text["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", True))  # transformers: top level decides
    tower = _tower_config(cfg["vision_config"])
    vision = InternViT(tower) if isinstance(tower, InternViTConfig) else VisionTransformer(tower)
    decoder = DecoderLM(DecoderConfig.from_hf(text))
    layer = cfg.get("vision_feature_layer", -1)
    select = cfg.get("vision_feature_select_strategy", "default")
    if not isinstance(layer, int):
        raise ConfigError(f"InternVL vision_feature_layer must be one int, got {layer!r}")
    if select not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy must be 'default' or 'full', got {select!r}")
    projector = PixelShuffleProjector(vision.config.hidden_size, decoder.config.hidden_size,
                                      ratio=_ratio(cfg.get("downsample_ratio", 0.5)),
                                      act=cfg.get("projector_hidden_act", "gelu"))
    if cfg.get("image_token_id") is None:
        raise ConfigError("InternVL config.json has no image_token_id")
    model = VLM(vision, projector, decoder, image_token_id=int(cfg["image_token_id"]), feature_layer=layer,
                feature_select=select, config=decoder.config)
    model.hf_config = dict(cfg)
    return model


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


# ---- the recipe / processor side (models/families/registry.py) -----------------------------------

def compose(spec: dict, tok) -> VLM:
    """A recipe's InternVL: the CLIP ViT of spec["vision_from"] + a new pixel-shuffle MLP + the decoder of
    spec["llm_from"]. spec keys: downsample_ratio (0.5), feature_layer (-1), feature_select (default),
    image_token (<image>), min_tiles / max_tiles (1 / 6) / use_thumbnail (true): the dynamic tiling."""
    vision_dir, llm_dir = _part_dirs(spec)
    text = read_config(llm_dir)
    cfg = {"architectures": [OCELLUS_ARCHITECTURE], "model_type": "ocellus_internvl",
           "vision_config": read_config(vision_dir), "text_config": text,
           "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
           "image_token_id": image_token_id(tok, spec), "downsample_ratio": spec.get("downsample_ratio", 0.5),
           "vision_feature_layer": spec.get("feature_layer", -1),
           "vision_feature_select_strategy": spec.get("feature_select", "default"),
           "min_dynamic_patch": int(spec.get("min_tiles", 1)), "max_dynamic_patch": int(spec.get("max_tiles", 6)),
           "use_thumbnail": bool(spec.get("use_thumbnail", True))}
    model = build_internvl(cfg)
    model.family_name = "internvl"
    model.vision_tower.load_state_dict(load_model(vision_dir).state_dict())
    model.language_model.load_state_dict(load_model(llm_dir).state_dict())
    return model


def _internvl_image_inputs(images, *, image_config, use_thumbnail: bool, per_tile: int):
    """Loaded images -> ({"pixel_values": [sum tiles, 3, S, S]}, context tokens per image)."""
    pixel_values, num_tiles = preprocess_internvl(images, image_config, use_thumbnail=use_thumbnail, max_pixels=None)
    return {"pixel_values": pixel_values}, [n * per_tile for n in num_tiles]


def make_processor(tok, image_config, model_cfg: dict, per_tile: int, image_token: str, chat_template=None,
                   image_wrap=IMAGE_WRAP):
    """InternVL's processor: tiles (image_config.crop_to_patches / min_patches / max_patches, tile size
    size_hw) and `image_wrap[0] + image_token * (per_tile * tiles) + image_wrap[1]` per image."""
    image_inputs = functools.partial(_internvl_image_inputs, image_config=image_config, per_tile=per_tile,
                                     use_thumbnail=bool(model_cfg.get("use_thumbnail", True)))
    return Processor(tok, image_config, patch_size=1, image_token=image_token, chat_template=chat_template,
                     image_inputs=image_inputs, image_wrap=image_wrap)


def _tiling(image_config, model_cfg: dict):
    """The image config with InternVL's tiling: tiles of the tower's size, config.json's tile bounds."""
    tile = _tower_config(model_cfg["vision_config"]).image_size
    return replace(image_config, size_hw=(tile, tile), crop_to_patches=True,
                   min_patches=int(model_cfg.get("min_dynamic_patch", 1)),
                   max_patches=int(model_cfg.get("max_dynamic_patch", 12)))


def training_processor(model: VLM, tok, image_config):
    """The recipe's processor: the recipe's mean/std, tiles of the tower's size, the model's tiling."""
    cfg = internvl_hf_config(model)
    return make_processor(tok, _tiling(image_config, cfg), cfg, tokens_per_tile(cfg),
                          tok.convert_ids_to_tokens(model.image_token_id))


def export_processor(model: VLM, tok, image_config, path) -> None:
    """preprocessor_config.json as transformers' GotOcr2ImageProcessor (InternVL's) writes it."""
    icfg = _tiling(image_config, internvl_hf_config(model))
    h, w = icfg.size_hw
    (Path(path) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "GotOcr2ImageProcessor", "do_resize": True, "size": {"height": h, "width": w},
        "crop_to_patches": True, "min_patches": icfg.min_patches, "max_patches": icfg.max_patches,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(icfg.image_mean),
        "image_std": list(icfg.image_std), "resample": int(icfg.resample)}, indent=2))


def processor_from_dir(directory):
    """An InternVL checkpoint dir: tokenizer (its context/start/end image tokens; else config.json's
    image_token_id and <img>, </img>), preprocessor_config.json (GotOcr2), config.json for the per-tile count."""
    directory = Path(directory)
    model_cfg = _read_json(directory / "config.json")
    image_dict = image_processor_dict(directory)
    if model_cfg is None or image_dict is None:
        raise ConfigError(f"{directory}: an InternVL processor needs config.json and preprocessor_config.json")
    tok = Tokenizer.from_dir(directory)
    named = tok.special_tokens_map
    # transformers' tokenizers name it context_image_token; a recipe's tokenizer has config.json's id only
    image_token = (named.get("context_image_token")
                   or tok.convert_ids_to_tokens(int(model_cfg.get("image_token_id", -1))))
    if image_token is None:
        raise ConfigError(f"{directory}: the tokenizer has no context_image_token and no token with config.json's "
                          f"image_token_id {model_cfg.get('image_token_id')}")
    wrap = (named.get("start_image_token", IMAGE_WRAP[0]), named.get("end_image_token", IMAGE_WRAP[1]))
    per_tile = tokens_per_tile(model_cfg)
    proc_cfg = _read_json(directory / "processor_config.json") or {}
    if proc_cfg.get("image_seq_length") not in (None, per_tile):
        raise ConfigError(f"{directory}: processor_config.json has image_seq_length={proc_cfg['image_seq_length']} "
                          f"but config.json's tower and downsample_ratio give {per_tile} tokens per tile")
    proc = make_processor(tok, ImageProcessorConfig.from_dict(image_dict), model_cfg, per_tile, image_token,
                          chat_template=proc_cfg.get("chat_template") if not tok.chat_template else None,
                          image_wrap=wrap)
    if int(model_cfg.get("image_token_id", proc.image_token_id)) != proc.image_token_id:
        raise ConfigError(f"{directory}: the tokenizer's image token {image_token!r} has id {proc.image_token_id}, "
                          f"but config.json's image_token_id is {model_cfg['image_token_id']}")
    return proc


def family():
    """The hub Family (ocellus/hub/families.py) for both InternVL architectures."""
    return Family(name="internvl", model_class=VLM, build=build_internvl, keymap=INTERNVL_KEYS,
                  hf_config=internvl_hf_config,
                  tied=lambda m: ("language_model.lm_head.weight",) if m.language_model.config.tie_word_embeddings
                  else ())
