"""task seed_tokenizer: SEED's image codec (a frozen ViT, a causal Q-Former -> VQ codes, a diffusion
detokenizer), three phases with a Trainer each (train/seed_tokenizer_run.py). Its recipe has a schema of its
own (one train section per phase).
"""
from __future__ import annotations

from pathlib import Path

from ocellus.models.generative.checkpoint import save_generator
from ocellus.train import seed_tokenizer_run

OWN_SCHEMA = True   # no shared model / data schema: train/tasks.check_sources leaves its inputs to the runner


def validate(recipe: dict, where: str = "recipe") -> None:
    seed_tokenizer_run.check_seed_recipe(recipe, where)


def export(recipe: dict, model, tok, path: Path) -> Path:
    """The codec (SeedCodec: tokenizer + detokenizer) as a generator directory (generator kind "seed")."""
    return save_generator(model, path)


def run(recipe: dict) -> dict:
    return seed_tokenizer_run.run_seed(recipe, recipe.get("_path", "recipe"))
