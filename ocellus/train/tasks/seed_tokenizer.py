"""task seed_tokenizer: SEED's image codec (a frozen ViT, a causal Q-Former -> VQ codes, a diffusion
detokenizer), three phases with a Trainer each (train/seed_tokenizer_run.py). Its recipe has a schema of its
own (one train section per phase).
"""
from __future__ import annotations

from ocellus.train import seed_tokenizer_run
from ocellus.train.run import export_generator as export   # the export hook: a generator directory

OWN_SCHEMA = True   # no shared model / data schema: train/tasks.check_sources leaves its inputs to the runner


def validate(recipe: dict, where: str = "recipe") -> None:
    seed_tokenizer_run.check_seed_recipe(recipe, where)


def run(recipe: dict) -> dict:
    return seed_tokenizer_run.run_seed(recipe, recipe.get("_path", "recipe"))


__all__ = ["OWN_SCHEMA", "validate", "export", "run"]
