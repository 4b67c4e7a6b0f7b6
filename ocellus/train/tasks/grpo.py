"""task grpo: the policy from model.from, prompts from data (e.g. count questions), rewards from method.rewards
and/or method.reward_model; held-out counting accuracy (or grounding IoU) before and after; reward / KL
curves. The method's run is train/grpo.py's `run`.
"""
from __future__ import annotations

from pathlib import Path

from ocellus.train import grpo
from ocellus.train.posttrain import export_policy as export
from ocellus.train.recipe import check_recipe
from ocellus.train.run import run_method


def validate(recipe: dict, where: str = "recipe") -> None:
    check_recipe(recipe, where, method=True)


def run(recipe: dict) -> Path:
    return run_method(recipe, grpo.run)


__all__ = ["validate", "export", "run"]
