"""The post-training recipes: each validates, bad ones are errors naming the problem, and each runs a
couple of steps end to end on the embedded tiny LLaVA (slow: these are the one-command acceptance runs,
cut down)."""
import json
from pathlib import Path

import pytest

import ocellus
from ocellus.errors import ConfigError
from ocellus.train.tasks import load_recipe, run_recipe, validate

ROOT = Path(__file__).resolve().parents[2] / "recipes" / "posttrain"
RECIPES = sorted(ROOT.glob("*.yaml"))


def test_every_method_has_a_recipe_and_each_validates():
    assert {p.stem for p in RECIPES} == {"sft", "rm", "dpo", "grpo", "ppo", "distill"}
    for path in RECIPES:
        load_recipe(path)


@pytest.mark.parametrize("change, message", [
    ({"method": {"bta": 0.1}}, r"unknown method keys \['bta'\] for task 'dpo'"),
    ({"data": {"source": "digits"}}, "data.source: shapes"),
    ({"model": {}}, "needs model.from"),
    ({"task": "rlhf"}, "task must be one of"),
])
def test_bad_posttrain_recipes(change, message):
    recipe = {"task": "dpo", "model": {"from": "default"}, "data": {"source": "shapes"}, "train": {"max_steps": 1}}
    with pytest.raises(ConfigError, match=message):
        validate({**recipe, **change})


def test_unknown_reward_is_a_config_error():
    with pytest.raises(ConfigError, match=r"method.rewards must be a list of names from .* got \['bleu'\]"):
        load_recipe(ROOT / "grpo.yaml", ["method.rewards=[bleu]"])


SMALL = ["train.max_steps=2", "train.progress=false", "train.log_every=1", "train.warmup_steps=0", "eval.n=8"]
SIZES = {"rm": ["train.batch_size=4"], "dpo": ["train.batch_size=4", "data.n=16"], "distill": ["train.batch_size=4"],
         "grpo": ["train.batch_size=2", "method.num_generations=2"], "ppo": ["train.batch_size=4", "method.ppo_epochs=1"]}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SIZES))
def test_recipe_runs_end_to_end(method, tmp_path):
    out = tmp_path / method
    path = run_recipe(load_recipe(ROOT / f"{method}.yaml", SMALL + SIZES[method] + [f"train.out_dir={out}"]))
    result = json.loads((out / "eval.json").read_text())
    assert set(result) >= {"before", "after"}
    lines = (out / "posttrain.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["step"] for line in lines)
    if method == "rm":
        from ocellus.train.reward_model import RewardModel
        RewardModel.from_dir(path)
    else:
        ocellus.load(path)
        ocellus.load_processor(path)


@pytest.mark.slow
def test_sft_recipe_runs(tmp_path):
    run_recipe(load_recipe(ROOT / "sft.yaml", ["train.max_steps=2", "train.progress=false", "train.batch_size=4",
                                               f"train.out_dir={tmp_path}", f"export.dir={tmp_path / 'model'}",
                                               f"model.from={ocellus.default_model_dir()}"]))
    assert (tmp_path / "model" / "config.json").exists()
