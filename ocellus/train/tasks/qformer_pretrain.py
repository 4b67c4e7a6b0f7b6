"""task qformer_pretrain: BLIP-2 stage 1, a Q-Former against a frozen ViT with ITC + ITG + ITM on captions
(train/qformer_objectives.py); its export is a stage-2 recipe's qformer_from.

model: {vision_from: DIR, qformer: {...}, qformer_init: DIR, embed_dim, label_smoothing} | {from: DIR}
data: {source: shapes, n, kind, max_length, image_size}
"""
from __future__ import annotations

import sys
from pathlib import Path

from ocellus.train.qformer_objectives import caption_dataset, compose_stage1
from ocellus.train.recipe import check_recipe
from ocellus.train.recipe_data import image_config, shapes_config
from ocellus.train.run import build_tokenizer, export_model as export, run_trainer   # hooks run_trainer calls


def validate(recipe: dict, where: str = "recipe") -> None:
    check_recipe(recipe, where, data="image")


def build_model(recipe: dict, tok):
    return compose_stage1(dict(recipe.get("model") or {}), tok)


def build_dataset(recipe: dict, tok, model):
    data = recipe["data"]
    size = int(data.get("image_size") or model.vision_tower.config.image_size)
    return caption_dataset(data, int(data.get("n", 1000)), tok, model, shapes_config(data), image_config(size))


def run(recipe: dict) -> Path:
    return run_trainer(recipe, sys.modules[__name__])


__all__ = ["validate", "build_tokenizer", "build_model", "build_dataset", "export", "run"]
