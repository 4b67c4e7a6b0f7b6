"""task lm: next-token training of a decoder on text (GPT-style), every token trained unless data.train_on
says otherwise (assistant: SFT on chat text).

model: {config: {...}}    a decoder built from config.json-like fields (vocab size and special ids come from the
                          tokenizer): Llama unless the config names another decoder family by architectures /
                          model_type (recipes/deepseek_tiny_shapes/sft.yaml: DeepseekV3ForCausalLM), or {from: DIR}
data: {source: shapes_text, n, kind, image_text: drop | description | caption, template, train_on,
       max_length, pack}  generated shapes conversations as text; the image stands in as nothing, its
                          description or its caption (data.image_text)
Exported as a checkpoint transformers opens (LlamaForCausalLM, or the family's class) + its tokenizer.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ocellus.data.encode import collate, encode_messages
from ocellus.data.packing import pack_batch
from ocellus.data.shapes import caption, describe, Obj, sample_at, Scene
from ocellus.errors import ConfigError
from ocellus.hub.families import family_for_config
from ocellus.train.recipe import check_recipe
from ocellus.train.recipe_data import EncodedDataset, shapes_config
from ocellus.train.run import build_tokenizer, export_model as export, run_trainer   # hooks run_trainer calls

PACKS = True   # data.pack: a batch's samples share rows (data/packing.pack_batch)


def validate(recipe: dict, where: str = "recipe") -> None:
    check_recipe(recipe, where, data="text", parts=("llm", "vision"))


def build_model(recipe: dict, tok):
    spec = recipe.get("model") or {}
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **spec.get("config", {}),
           "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
           "bos_token_id": tok.bos_token_id}
    return family_for_config(cfg).build(cfg)


def build_dataset(recipe: dict, tok, model):
    data = recipe["data"]
    n, max_len = int(data.get("n", 1000)), data.get("max_length")
    cfg = shapes_config(data)

    image_text = data.get("image_text", "drop")
    if image_text not in ("drop", "description", "caption"):
        raise ConfigError(f"data.image_text must be drop, description or caption, got {image_text!r}")

    def make(i):
        sample = sample_at(cfg, i, data.get("kind", "mixed"))
        stand_in = scene_text(cfg, sample["objects"], image_text)
        msgs = [{"role": m["role"], "content": [({"type": "text", "text": stand_in + "\n"} if p.get("type") == "image"
                                                 else p) for p in m["content"]
                                                if p.get("type") == "text" or (stand_in and p.get("type") == "image")]}
                for m in sample["messages"]]
        return encode_messages(msgs, tok, data.get("template", "chatml"), train_on=data.get("train_on", "all"),
                               max_length=max_len)
    pad = tok.pad_token_id or 0
    return EncodedDataset(n, make), (lambda rows: pack_batch(rows, pad, max_len)) if data.get("pack") else \
        (lambda rows: collate(rows, pad))


def scene_text(cfg, objects: list[dict], how: str) -> str:
    """What stands in for a scene's image in text-only pretraining (data.image_text): nothing
    ("drop"), its detailed description or its short caption, so the text holds what the image shows,
    as the text-only GPT-4 that wrote LLaVA's data read captions and boxes instead of pixels."""
    if how == "drop":
        return ""
    scene = Scene(cfg.image_size, cfg.background, tuple(Obj(o["shape"], o["colour"], tuple(o["bbox"])) for o in objects))
    return describe(scene) if how == "description" else caption(scene)


def run(recipe: dict) -> Path:
    return run_trainer(recipe, sys.modules[__name__])


__all__ = ["validate", "build_tokenizer", "build_model", "build_dataset", "export", "run"]
