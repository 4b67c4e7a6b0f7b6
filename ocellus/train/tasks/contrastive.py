"""task contrastive: a CLIP or SigLIP dual encoder trained from scratch on shapes (image, caption) pairs;
task moco: MoCo v2 on two augmented views of each image. Model, data, export and the evaluation after export
live in train/contrastive_run.py (also read by the shard loader and the retrieval evaluation); this module is
their place in the task table.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ocellus.train import run as shared
from ocellus.train.contrastive_run import build_dataset, build_model, export, shard_data   # run_trainer's hooks
from ocellus.train.recipe import check_recipe
from ocellus.train.run import run_trainer


def validate(recipe: dict, where: str = "recipe") -> None:
    # MoCo trains one vision tower (part `vision`); a dual encoder has its text tower and projections too
    check_recipe(recipe, where, data="image", parts=("llm", "vision") if recipe["task"] == "moco" else None)


def build_tokenizer(recipe: dict, out: Path):
    return None if recipe["task"] == "moco" else shared.build_tokenizer(recipe, out)   # MoCo reads pixels only


def run(recipe: dict) -> Path:
    return run_trainer(recipe, sys.modules[__name__])


__all__ = ["validate", "build_tokenizer", "build_model", "build_dataset", "shard_data", "export", "run"]
