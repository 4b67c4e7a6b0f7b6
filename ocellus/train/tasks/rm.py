"""task rm: a reward head on model.from's decoder, Bradley-Terry on preference pairs (shapes ground truth or
TRL rows); ranking accuracy on held-out pairs (eval-seed scenes) before (random head) and after. Exported as
the backbone's checkpoint + reward_head.safetensors (train/reward_model.py), which GRPO / PPO read as
method.reward_model.
"""
from __future__ import annotations

from pathlib import Path

from ocellus.eval.harness import EVAL_SEED
from ocellus.hub.checkpoint import load_model
from ocellus.data.processor import load_processor
from ocellus.train.posttrain import fit, model_dir, pair_dataset, report
from ocellus.train.preference import collate_pairs
from ocellus.train.recipe import check_recipe
from ocellus.train.reward_model import pair_accuracy, RewardModel
from ocellus.train.run import run_method


def validate(recipe: dict, where: str = "recipe") -> None:
    check_recipe(recipe, where, method=True)


def train(recipe: dict, cfg, out: Path) -> Path:
    source = model_dir(recipe["model"])
    processor = load_processor(source)
    model = RewardModel(load_model(source))
    heldout = pair_dataset(recipe, n=int((recipe.get("eval") or {}).get("n", 500)), seed=EVAL_SEED)
    before = pair_accuracy(model, processor, heldout)
    history = fit(model, pair_dataset(recipe), collate_pairs(processor), recipe, cfg, out, ["accuracy", "margin"])
    after = pair_accuracy(model, processor, heldout)
    path = export(recipe, model, processor.tokenizer, out / "model")
    n = len(heldout)
    report(out, recipe.get("name", "rm"), {"pair accuracy": (n, before[0])}, {"pair accuracy": (n, after[0])},
           {"margin_before": before[1], "margin_after": after[1], "final": history[-1] if history else {}})
    return path


def export(recipe: dict, model: RewardModel, tok, path: Path) -> Path:
    return model.save(path, tokenizer=tok)


def run(recipe: dict) -> Path:
    return run_method(recipe, train)


__all__ = ["validate", "train", "export", "run"]
