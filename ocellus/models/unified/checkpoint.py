"""Unified models as directories: config.json (the build spec, the image tokenizer's spec, the words) +
model.safetensors (the tokenizer's weights included), one self-contained directory `ocellus chat` opens.

    config.json  {"model_type": "ocellus_unified", "model": {family: emu3|janus|showo|seed_llama, dim, ...},
                  "tokenizer": the VQ-VAE / SEED codec spec (models/generative/checkpoint.py),
                  "colours": [...], "image_size": S, "generate": {drawing options}}

`family()` is its record in the registry (hub/families.py): ocellus.load / ocellus.save read and write it
through hub's one strict path; save_unified / load_unified are thin wrappers over it. Trained by
train/unified.py (`task: unified`).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ocellus.data.shapes import SHAPES
from ocellus.errors import CheckpointError, ConfigError
from ocellus.hub.checkpoint import load_model, save_model
from ocellus.hub.checkpoint_dir import read_json_object
from ocellus.hub.families import OWN_NAMES, Family
from ocellus.models.generative import checkpoint as generators   # generators.build, looked up when called
from ocellus.models.text.decoder import DecoderLM
from ocellus.models.unified import UnifiedVocab, WordVocab
from ocellus.models.unified.emu3 import Emu3, decoder_config
from ocellus.models.unified.janus import Janus, build_janus
from ocellus.models.unified.seed_llama import SeedLlama, build_seed_llama
from ocellus.models.unified.showo import Showo, build_showo

MODEL_TYPE = "ocellus_unified"
FAMILIES = ("emu3", "janus", "showo", "seed_llama")
CONFIG_KEYS = ("model", "tokenizer", "colours", "image_size")   # + "generate" (optional)


def text_vocab(colours: list[str]) -> WordVocab:
    return WordVocab(list(colours) + list(SHAPES))


def build_model(spec: dict, tokenizer, text: WordVocab, image_size: int):
    """spec: {family: emu3|janus|showo|seed_llama, dim, num_layers, num_heads, ...} -> the model around a
    trained tokenizer (a VQ-VAE; for seed_llama the SEED codec)."""
    spec = dict(spec)
    family = spec.pop("family", None)
    if family == "emu3":
        grid = image_size // tokenizer.cfg.downsample_factor
        vocab = UnifiedVocab(len(text), tokenizer.cfg.num_codes, max_grid=max(grid, 1))
        cfg = decoder_config(vocab.size, 16 + grid * (grid + 1) + 4, int(spec.pop("dim", 128)),
                             int(spec.pop("num_layers", 4)), int(spec.pop("num_heads", 4)))
        model = Emu3(DecoderLM(cfg), tokenizer, vocab, text, float(spec.pop("vision_weight", 0.5)), grid)
    elif family == "janus":
        model = build_janus(spec, tokenizer, text, image_size)
        spec = {}
    elif family == "showo":
        model = build_showo(spec, tokenizer, text, image_size)
        spec = {}
    elif family == "seed_llama":
        model = build_seed_llama(spec, tokenizer, text)
        spec = {}
    else:
        raise ConfigError(f"model.family must be one of {FAMILIES}, got {family!r}")
    if spec:
        raise ConfigError(f"unknown model keys for {family}: {sorted(spec)}")
    return model


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
    """ocellus.load / ocellus.save of a unified model (hub/families.py): model_type ocellus_unified, no
    architectures, the model's own tensor names."""
    return Family(name="unified", model_class=(Emu3, Janus, Showo, SeedLlama), build=build_from_config,
                  keymap=OWN_NAMES, hf_config=hf_config, config_dtype=False)


def save_unified(model, spec: dict, tokenizer_spec: dict, colours: list[str], image_size: int, out_dir,
                 generate: dict | None = None) -> Path:
    """A self-contained directory: config.json (the build spec, the tokenizer's spec, the words) +
    model.safetensors (tokenizer included). `ocellus chat --model DIR` opens it."""
    model.unified_config = {"model": spec, "tokenizer": tokenizer_spec, "colours": colours,
                            "image_size": image_size, "generate": dict(generate or {})}
    model.family_name = "unified"
    return save_model(model, out_dir)


def is_unified_dir(path) -> bool:
    try:
        return (read_json_object(Path(path) / "config.json") or {}).get("model_type") == MODEL_TYPE
    except CheckpointError:
        return False


def load_unified(path):
    """A unified-model directory -> the model, through hub's one strict load path (= ocellus.load)."""
    path = Path(path)
    if not is_unified_dir(path) or not (path / "model.safetensors").exists():
        raise CheckpointError(f"{path} is not a unified-model checkpoint (config.json with model_type "
                              f"{MODEL_TYPE!r} + model.safetensors)")
    return load_model(path)
