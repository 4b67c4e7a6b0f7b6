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

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.models.connectors.pixel_shuffle import PixelShuffleProjector
from ocellus.models.families.common import feature_layers, image_token_id, part_dirs, text_config
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.intern_vit import InternViT, InternViTConfig
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.vlm import VLM
from ocellus.data.image_tiling import internvl_num_tokens

MODEL_TYPES = ("internvl", "ocellus_internvl")
HF_ARCHITECTURE = "InternVLForConditionalGeneration"
OCELLUS_ARCHITECTURE = "OcellusInternVLForConditionalGeneration"   # CLIP tower: no transformers class


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
    text = text_config(cfg, "InternVL", default="qwen2")   # InternVL3.5: qwen3
    text["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", True))  # transformers: top level decides
    tower = _tower_config(cfg["vision_config"])
    vision = InternViT(tower) if isinstance(tower, InternViTConfig) else VisionTransformer(tower)
    decoder = DecoderLM(DecoderConfig.from_hf(text))
    layer = cfg.get("vision_feature_layer", -1)
    select = cfg.get("vision_feature_select_strategy", "default")
    if not isinstance(layer, int):
        raise ConfigError(f"InternVL vision_feature_layer must be one int, got {layer!r}")
    feature_layers(layer, vision.config.num_layers + 1)
    if select not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy must be 'default' or 'full', got {select!r}")
    if select == "full" and (isinstance(tower, InternViTConfig) or tower.use_cls_token):
        # the CLS token kept: P + 1 features are no square grid to fold (transformers fails there too)
        raise ConfigError("InternVL vision_feature_select_strategy 'full' keeps the tower's CLS token, which pixel "
                          "shuffle cannot fold; use 'default'")
    projector = PixelShuffleProjector(vision.config.hidden_size, decoder.config.hidden_size,
                                      ratio=_ratio(cfg.get("downsample_ratio", 0.5)),
                                      act=cfg.get("projector_hidden_act", "gelu"))
    if cfg.get("image_token_id") is None:
        raise ConfigError("InternVL config.json has no image_token_id")
    model = VLM(vision, projector, decoder, image_token_id=int(cfg["image_token_id"]), feature_layer=layer,
                feature_select=select, config=decoder.config)
    model.hf_config = dict(cfg)
    return model


# ---- the recipe side (model.architecture: internvl) -----------------------------------------------------

def compose(spec: dict, tok) -> VLM:
    """A recipe's InternVL: the CLIP ViT of spec["vision_from"] + a new pixel-shuffle MLP + the decoder of
    spec["llm_from"]. spec keys: downsample_ratio (0.5), feature_layer (-1), feature_select (default),
    image_token (<image>), min_tiles / max_tiles (1 / 6) / use_thumbnail (true): the dynamic tiling."""
    vision_dir, llm_dir = part_dirs(spec)
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
