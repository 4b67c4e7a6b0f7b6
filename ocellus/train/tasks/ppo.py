"""task ppo: actor from model.from, critic = a copy with a value head, reference = a frozen copy, reward =
method.rewards and/or method.reward_model; held-out score before and after. The method's run is
train/ppo.py's `run`.
"""
from __future__ import annotations

from pathlib import Path

from ocellus.train import ppo
from ocellus.train.posttrain import export_policy as export
from ocellus.train.recipe import check_recipe
from ocellus.train.run import run_method


def validate(recipe: dict, where: str = "recipe") -> None:
    check_recipe(recipe, where, method=True)


def run(recipe: dict) -> Path:
    return run_method(recipe, ppo.run)


__all__ = ["validate", "export", "run"]
