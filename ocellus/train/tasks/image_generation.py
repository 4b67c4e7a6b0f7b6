"""task image_generation: VQ-VAE, VQGAN, DDPM, latent diffusion, MaskGIT and autoregressive image generators
on digits or single shapes (train/generative.py: data, training, the measured quality.json). Its recipe has a
schema of its own (schema.runner_fields: the train section typed, model / data / eval checked by the runner).
"""
from __future__ import annotations

from pathlib import Path

from ocellus.train import generative
from ocellus.train.run import export_generator as export   # the export hook: a generator directory

OWN_SCHEMA = True   # no shared model / data schema: train/tasks.check_sources leaves its inputs to the runner


def validate(recipe: dict, where: str = "recipe") -> None:
    generative.check_generative_recipe(recipe, where)


def run(recipe: dict) -> Path:
    return generative.run_generative(recipe)


__all__ = ["OWN_SCHEMA", "validate", "export", "run"]
