"""task unified: one model (Emu3, Janus, Show-o, SEED-LLaMA) trained to caption and to draw single shapes over
a trained image tokenizer's codes (train/unified.py: data, stages, the measured quality.json). Its recipe has
a schema of its own (schema.runner_fields + the runner's checks).
"""
from __future__ import annotations

from pathlib import Path

from ocellus.train import unified

OWN_SCHEMA = True   # no shared model / data schema: train/tasks.check_sources leaves its inputs to the runner


def validate(recipe: dict, where: str = "recipe") -> None:
    unified.check_unified(recipe, where)


def export(recipe: dict, model, tok, path: Path) -> Path:
    """The trained model as `ocellus chat --model DIR` opens it."""
    return unified.export(recipe, model, path)


def run(recipe: dict) -> dict:
    return unified.run_unified(recipe, recipe.get("_path", "recipe"))
