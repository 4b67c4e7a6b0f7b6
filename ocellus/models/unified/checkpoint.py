"""Unified models as directories: config.json (the build spec, the image tokenizer's spec, the words) +
model.safetensors (the tokenizer's weights included), one self-contained directory `ocellus chat` opens.

    config.json  {"model_type": "ocellus_unified", "model": {family: emu3|janus|showo|seed_llama, dim, ...},
                  "tokenizer": the VQ-VAE / SEED codec spec (models/generative/checkpoint.py),
                  "colours": [...], "image_size": S, "generate": {drawing options}}

Its Family (the registry's "unified") is models/families/unified/: ocellus.load / ocellus.save read and write it
through hub's one strict path; save_unified / load_unified are thin wrappers over it. Trained by
train/unified.py (`task: unified`).
"""
from __future__ import annotations

from pathlib import Path

from ocellus.data.shapes import SHAPES
from ocellus.errors import CheckpointError, ConfigError
from ocellus.hub.checkpoint import load_model, save_model
from ocellus.hub.checkpoint_dir import read_json_object
from ocellus.models.text.decoder import DecoderLM
from ocellus.models.unified import UnifiedVocab, WordVocab
from ocellus.models.unified.emu3 import Emu3, decoder_config
from ocellus.models.unified.janus import build_janus
from ocellus.models.unified.seed_llama import build_seed_llama
from ocellus.models.unified.showo import build_showo

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
