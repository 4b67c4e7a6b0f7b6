"""LLaVA (Liu et al. 2023, "Visual Instruction Tuning") and LLaVA-1.5 ("Improved Baselines"):
CLIP/SigLIP ViT -> linear (1.0) or 2-layer GELU MLP (1.5) -> Llama-family decoder, early fusion.

Matches transformers' LlavaForConditionalGeneration (tests/parity/test_llava_parity.py).
config.json: vision_config, text_config, image_token_index, vision_feature_layer (int or list),
vision_feature_select_strategy ("default" drops CLS, "full" keeps it), projector_hidden_act,
multimodal_projector_bias.

Checkpoint names come in two layouts, both loaded: the hub's (vision_tower.vision_model.*,
language_model.model.*, language_model.lm_head) and transformers 5's in-memory one
(model.vision_tower.*, model.language_model.*, lm_head). We save the hub layout.
"""
from __future__ import annotations

from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.hub.vision_families import vision_rules
from ocellus.models.connectors.mlp import MLPProjector
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.vlm import VLM
from ocellus.data.processor import Processor


def _decoder_rules(ours: str, model: str, head: str) -> tuple[tuple[str, str], ...]:
    return ((f"{ours}embed_tokens.weight", f"{model}embed_tokens.weight"),
            (f"{ours}layers.{{i}}.{{rest}}", f"{model}layers.{{i}}.{{rest}}"),
            (f"{ours}norm.weight", f"{model}norm.weight"),
            (f"{ours}lm_head.weight", head))


LLAVA_KEYS = KeyMap(
    rules=(
        # hub layout first: what we write
        *vision_rules("vision_tower.", "vision_tower.vision_model."),
        ("multi_modal_projector.{rest}", "multi_modal_projector.{rest}"),
        *_decoder_rules("language_model.", "language_model.model.", "language_model.lm_head.weight"),
        # transformers 5 layouts, read only
        *vision_rules("vision_tower.", "vision_tower."),
        *vision_rules("vision_tower.", "model.vision_tower.vision_model."),
        *vision_rules("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.{rest}", "model.multi_modal_projector.{rest}"),
        *_decoder_rules("language_model.", "model.language_model.", "lm_head.weight"),
    ),
    drop=(r"(^|\.)embeddings\.position_ids$", r"rotary_emb\.inv_freq$"),
)


def _text_config(cfg: dict) -> dict:
    text = dict(cfg.get("text_config") or {})
    if not text:
        raise ConfigError("LLaVA config.json has no text_config")
    text.setdefault("model_type", "llama")
    if text["model_type"] not in ("llama", "qwen2", "mistral", "vicuna"):
        raise ConfigError(f"LLaVA text_config.model_type {text['model_type']!r} is not a supported decoder "
                          f"(llama, qwen2)")
    if cfg.get("tie_word_embeddings") and "tie_word_embeddings" not in text:
        text["tie_word_embeddings"] = True
    return text


def build_llava(cfg: dict) -> VLM:
    if "vision_config" not in cfg:
        raise ConfigError("LLaVA config.json has no vision_config")
    vision = VisionTransformer(ViTConfig.from_hf(cfg["vision_config"]))
    text_cfg = DecoderConfig.from_hf(_text_config(cfg))
    decoder = DecoderLM(text_cfg)
    layer = cfg.get("vision_feature_layer", -2)
    layers = [layer] if isinstance(layer, int) else list(layer)
    select = cfg.get("vision_feature_select_strategy", "default")
    if select not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy must be 'default' or 'full', got {select!r}")
    in_dim = vision.config.hidden_size * len(layers)
    projector = MLPProjector(in_dim, text_cfg.hidden_size, depth=int(cfg.get("projector_depth", 2)),
                             act=cfg.get("projector_hidden_act", "gelu"),
                             bias=bool(cfg.get("multimodal_projector_bias", True)))
    image_token = cfg.get("image_token_index", cfg.get("image_token_id"))
    if image_token is None:
        raise ConfigError("LLaVA config.json has no image_token_index")
    model = VLM(vision, projector, decoder, image_token_id=int(image_token), feature_layer=layer,
                feature_select=select, config=text_cfg)
    model.hf_config = dict(cfg)
    return model


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


def family() -> Family:
    """The hub Family (ocellus/hub/families.py) of LlavaForConditionalGeneration."""
    return Family(name="llava", model_class=VLM, build=build_llava, keymap=LLAVA_KEYS, hf_config=llava_hf_config,
                  tied=lambda m: ("language_model.lm_head.weight",)
                  if m.language_model.config.tie_word_embeddings else ())


# ---- the recipe / processor side (models/families/registry.py) -----------------------------------
MODEL_TYPES = ("llava",)
# transformers' LlavaNextConfig default, for a config.json that leaves it out (LLaVA-NeXT's; counted here too)
DEFAULT_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# the model.* keys of a LLaVA recipe (run.build_model reads `from` and `init_from` itself)
SPEC_KEYS = frozenset({"architecture", "vision_from", "llm_from", "connector", "feature_layer", "feature_select",
                       "image_token", "init_from"})


def check_spec(spec: dict, known, family: str) -> None:
    """A recipe's model section may hold only `known` keys: a misspelt one is an error, never ignored."""
    unknown = set(spec) - set(known)
    if unknown:
        raise ConfigError(f"{family} model: unknown keys {sorted(unknown)}; known: {sorted(known)}")


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
    vision_dir, llm_dir = _part_dirs(spec)
    connector = spec.get("connector") or {}
    return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "vision_config": read_config(vision_dir), "text_config": read_config(llm_dir),
            "image_token_index": image_token_id(tok, spec),
            "vision_feature_layer": spec.get("feature_layer", -2),
            "vision_feature_select_strategy": spec.get("feature_select", "default"),
            "projector_hidden_act": connector.get("act", "gelu"), "projector_depth": connector.get("depth", 2)}


def load_parts(model: VLM, spec: dict) -> VLM:
    """The pretrained weights of spec's vision_from / llm_from into the composed model's tower and decoder."""
    vision_dir, llm_dir = _part_dirs(spec)
    model.vision_tower.load_state_dict(load_model(vision_dir).state_dict())
    model.language_model.load_state_dict(load_model(llm_dir).state_dict())
    return model


def _part_dirs(spec: dict) -> tuple[Path, Path]:
    if not (spec.get("vision_from") and spec.get("llm_from")):
        raise ConfigError("model for a vlm needs `from`, or both `vision_from` and `llm_from`")
    return Path(spec["vision_from"]), Path(spec["llm_from"])


def image_token_id(tok, spec: dict) -> int:
    """The id of the recipe's image placeholder (model.image_token, default <image>) in the tokenizer."""
    image_token = spec.get("image_token", "<image>")
    index = tok.convert_tokens_to_ids(image_token)
    if index is None:
        raise ConfigError(f"the tokenizer has no image token {image_token!r}")
    return index


def training_processor(model: VLM, tok, image_config):
    """The recipe's processor (LLaVA-NeXT's too: with an anyres packer, its canvases and tile size)."""
    vit = model.vision_tower.config
    packer = getattr(model, "packer", None)
    anyres = {} if packer is None else {"grid_pinpoints": packer.grid_pinpoints, "tile_size": packer.tile_size}
    return Processor(tok, image_config, patch_size=vit.patch_size, num_extra_tokens=int(vit.use_cls_token),
                     feature_select=model.feature_select, image_token=tok.convert_ids_to_tokens(model.image_token_id),
                     **anyres)


def count_from_config(cfg: dict, directory: Path) -> dict:
    """The token-count numbers as the model built from config.json will use them: patch_size,
    num_extra_tokens, feature_select, and for LLaVA-NeXT grid_pinpoints / tile_size."""
    vit = ViTConfig.from_hf({**cfg, "model_type": "llava"})  # the model's own parser (defaults); llava_next nests alike
    out = dict(patch_size=vit.patch_size, num_extra_tokens=int(vit.use_cls_token),
               feature_select=cfg.get("vision_feature_select_strategy", "default"), grid_pinpoints=None)
    if cfg.get("model_type") == "llava_next":
        pinpoints = cfg.get("image_grid_pinpoints") or DEFAULT_GRID_PINPOINTS
        out.update(grid_pinpoints=tuple(tuple(int(x) for x in p) for p in pinpoints), tile_size=vit.image_size)
    return out


def processor_from_dir(directory):
    """A LLaVA / LLaVA-NeXT checkpoint dir -> its Processor (token counts from config.json through this family)."""
    return Processor.from_dir(directory, counts=count_from_config)
