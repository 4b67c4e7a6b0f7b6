"""LLaVA (Liu et al. 2023, "Visual Instruction Tuning") and LLaVA-1.5 ("Improved Baselines"):
CLIP/SigLIP ViT -> linear (1.0) or 2-layer GELU MLP (1.5) -> Llama-family decoder, early fusion.

Matches transformers' LlavaForConditionalGeneration (tests/parity/test_llava_parity.py).
config.json: vision_config, text_config, image_token_index, vision_feature_layer (int or list),
vision_feature_select_strategy ("default" drops CLS, "full" keeps it), projector_hidden_act,
multimodal_projector_bias. The key table and config writer: checkpoint.py; the processor: processor.py.
"""
from __future__ import annotations

from ocellus.data.image import LLAVA_NEXT_GRID_PINPOINTS
from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.models.connectors.mlp import MLPProjector
from ocellus.models.families.common import (check_spec, config_image_token, feature_layers, image_token_id,
                                            part_dirs, text_config)
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.vlm import VLM

MODEL_TYPES = ("llava",)
# transformers' LlavaNextConfig default, for a config.json that leaves it out (LLaVA-NeXT's; counted by
# processor.py too)
DEFAULT_GRID_PINPOINTS = [list(p) for p in LLAVA_NEXT_GRID_PINPOINTS]
# the model.* keys of a LLaVA recipe (run.build_model reads `from` and `init_from` itself)
SPEC_KEYS = frozenset({"architecture", "vision_from", "llm_from", "connector", "feature_layer", "feature_select",
                       "image_token", "init_from"})


def build_llava(cfg: dict) -> VLM:
    if "vision_config" not in cfg:
        raise ConfigError("LLaVA config.json has no vision_config")
    # a vision_config naming no model_type is CLIP's (LlavaConfig's, LlavaNextConfig's default; count_from_config
    # reads it so too)
    vision = VisionTransformer(ViTConfig.from_hf({"model_type": "clip_vision_model", **cfg["vision_config"]}))
    text_cfg = DecoderConfig.from_hf(text_config(cfg))
    decoder = DecoderLM(text_cfg)
    layer = cfg.get("vision_feature_layer", -2)
    layers = feature_layers(layer, vision.config.num_layers + 1)
    select = cfg.get("vision_feature_select_strategy", "default")
    if select not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy must be 'default' or 'full', got {select!r}")
    in_dim = vision.config.hidden_size * len(layers)
    projector = MLPProjector(in_dim, text_cfg.hidden_size, depth=int(cfg.get("projector_depth", 2)),
                             act=cfg.get("projector_hidden_act", "gelu"),
                             bias=bool(cfg.get("multimodal_projector_bias", True)))
    image_token = config_image_token(cfg, "LLaVA")
    if image_token is None:
        raise ConfigError("LLaVA config.json has no image_token_index")
    model = VLM(vision, projector, decoder, image_token_id=int(image_token), feature_layer=layer,
                feature_select=select, config=text_cfg)
    model.hf_config = dict(cfg)
    return model


# ---- the recipe side (model.architecture: llava) ---------------------------------------------------------
def compose(spec: dict, tok) -> VLM:
    """A recipe's LLaVA: the ViT of spec["vision_from"] + a new MLP connector (spec["connector"]:
    depth, act) + the decoder of spec["llm_from"]; feature_layer / feature_select as config.json's."""
    check_spec(spec, SPEC_KEYS, "llava")
    model = build_llava(compose_config(spec, tok))
    model.family_name = "llava"
    return load_parts(model, spec)


def compose_config(spec: dict, tok) -> dict:
    """The LLaVA config.json of a recipe's model: the parts' configs, the image token, the spec's connector
    and feature choice (LLaVA-NeXT adds its canvases to it)."""
    vision_dir, llm_dir = part_dirs(spec)
    connector = spec.get("connector") or {}
    return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "vision_config": read_config(vision_dir), "text_config": read_config(llm_dir),
            "image_token_index": image_token_id(tok, spec),
            "vision_feature_layer": spec.get("feature_layer", -2),
            "vision_feature_select_strategy": spec.get("feature_select", "default"),
            "projector_hidden_act": connector.get("act", "gelu"), "projector_depth": connector.get("depth", 2)}


def load_parts(model: VLM, spec: dict) -> VLM:
    """The pretrained weights of spec's vision_from / llm_from into the composed model's tower and decoder."""
    vision_dir, llm_dir = part_dirs(spec)
    model.vision_tower.load_state_dict(load_model(vision_dir).state_dict())
    model.language_model.load_state_dict(load_model(llm_dir).state_dict())
    return model
