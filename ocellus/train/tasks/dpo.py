"""task dpo: the policy from model.from against a frozen copy of itself (train/dpo.py), on preference pairs
(shapes: gold answer vs a plausible wrong one; method.rejected: model puts the start model's own wrong greedy
answers in the rejected slot where it has them; or TRL rows); held-out VQA accuracy before and after.
"""
from __future__ import annotations

from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.train.dpo import DPO, DPOConfig
from ocellus.train.hf_data import Streamed
from ocellus.train.posttrain import export_policy as export, fit, heldout_qa, load_start, pair_dataset, report
from ocellus.train.preference import collate_pairs, preference_pair, with_model_rejections
from ocellus.train.recipe import check_recipe
from ocellus.train.run import run_method


def validate(recipe: dict, where: str = "recipe") -> None:
    check_recipe(recipe, where, method=True)


def train(recipe: dict, cfg, out: Path) -> Path:
    method = dict(recipe.get("method") or {})
    rejected = method.pop("rejected", "plausible")
    if rejected not in ("plausible", "model"):
        raise ConfigError(f"method.rejected must be plausible or model, got {rejected!r}")
    policy, processor = load_start(recipe["model"])
    n_eval = int((recipe.get("eval") or {}).get("n", 500))
    before = heldout_qa(policy, processor, n_eval)
    pairs, extra = pair_dataset(recipe), {}
    if rejected == "model" and isinstance(pairs, Streamed):
        raise ConfigError("method.rejected: model mines every row with the start model before training; streamed "
                          "rows (data.streaming) are not held: use method.rejected: plausible, or leave data.streaming "
                          "unset")
    if rejected == "model":  # the rows the run will see, mined once with the start model
        rows = [pairs.make_row(i) for i in range(len(pairs))]
        rows, extra["share_model_rejected"] = with_model_rejections(policy, processor, rows)
        pairs = [preference_pair(r, i) for i, r in enumerate(rows)]
    objective = DPO.with_frozen_copy(policy, DPOConfig(**method))
    history = fit(objective, pairs, collate_pairs(processor), recipe, cfg, out,
                  ["rewards/margins", "rewards/accuracies"])
    after = heldout_qa(policy, processor, n_eval)
    path = export(recipe, policy, processor.tokenizer, out / "model")
    report(out, recipe.get("name", "dpo"), before, after, {**extra, "final": history[-1] if history else {}})
    return path


def run(recipe: dict) -> Path:
    return run_method(recipe, train)


__all__ = ["validate", "train", "export", "run"]
