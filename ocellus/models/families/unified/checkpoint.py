"""Unified-model checkpoints (the registry's Family): config.json = {"model_type": "ocellus_unified", "model": the
build spec, "tokenizer": the image tokenizer's spec, "colours", "image_size", "generate"}, model.safetensors the
model's own names (the tokenizer's included). The builders are models/unified/checkpoint.py's build_model and
models/generative/checkpoint.build (looked up when called); save_unified / load_unified there wrap this path."""
from __future__ import annotations

from torch import nn

from ocellus.errors import ConfigError
from ocellus.hub.families import OWN_NAMES, Family
from ocellus.models.generative import checkpoint as generators
from ocellus.models.unified.checkpoint import CONFIG_KEYS, MODEL_TYPE, build_model, text_vocab
from ocellus.models.unified.emu3 import Emu3
from ocellus.models.unified.janus import Janus
from ocellus.models.unified.seed_llama import SeedLlama
from ocellus.models.unified.showo import Showo


def build_from_config(cfg: dict) -> nn.Module:
    """config.json -> the model, its tokenizer rebuilt from the embedded spec, the chat's settings on it."""
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"a unified-model config.json (model_type {MODEL_TYPE!r}) needs {list(CONFIG_KEYS)}; "
                          f"this one lacks {missing}")
    model = build_model(dict(cfg["model"]), generators.build(dict(cfg["tokenizer"])), text_vocab(cfg["colours"]),
                        cfg["image_size"])
    model.image_size, model.colours, model.generate_options = cfg["image_size"], cfg["colours"], cfg.get("generate", {})
    model.unified_config = {k: cfg[k] for k in (*CONFIG_KEYS, "generate") if k in cfg}
    return model


def hf_config(model: nn.Module) -> dict:
    config = getattr(model, "unified_config", None)
    if config is None:
        raise ConfigError(f"this {type(model).__name__} does not know the spec it was built from: save it with "
                          f"save_unified(model, spec, tokenizer_spec, colours, image_size, out_dir)")
    return {"model_type": MODEL_TYPE, **config}


def family(architecture: str | None = None) -> Family:
    """ocellus.load / ocellus.save of a unified model: model_type ocellus_unified, no architectures, the model's
    own tensor names."""
    return Family(name="unified", model_class=(Emu3, Janus, Showo, SeedLlama), build=build_from_config,
                  keymap=OWN_NAMES, hf_config=hf_config, config_dtype=False)
