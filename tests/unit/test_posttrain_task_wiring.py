"""The wiring of the DPO, reward-model and distillation tasks (ocellus/train/tasks/dpo.py, rm.py, distill.py): which
model trains, which is the frozen reference or teacher, which pairs train and which are held out, what eval.json
reports; and the recipe data section's shapes config (ocellus/train/recipe_data.py). Each runs its posttrain recipe
for 2 steps on the embedded tiny LLaVA, the trained objective and dataset caught on their way into `fit`."""
import json
from pathlib import Path

import torch

import ocellus
from ocellus.data.processor import load_processor
from ocellus.eval.harness import EVAL_SEED
from ocellus.hub.checkpoint import load_model
from ocellus.train.distill import shrink_decoder
from ocellus.train.posttrain import heldout_qa, load_start, pair_dataset
from ocellus.train.recipe_data import shapes_config
from ocellus.train.reward_model import RewardModel, pair_accuracy
from ocellus.train.tasks import distill as distill_task, dpo as dpo_task, load_recipe, rm as rm_task, run_recipe

POST = Path(__file__).resolve().parents[2] / "recipes" / "posttrain"
SMALL = ["train.max_steps=2", "train.progress=false", "train.log_every=1", "train.warmup_steps=0", "eval.n=8",
         "train.batch_size=4"]


def _caught_fit(monkeypatch, task) -> dict:
    """The objective and dataset the task hands to posttrain.fit (which then runs as usual)."""
    seen, real = {}, task.fit

    def fit(objective, dataset, *args):
        seen.update(objective=objective, dataset=dataset)
        return real(objective, dataset, *args)
    monkeypatch.setattr(task, "fit", fit)
    return seen


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


def _rows(table: dict) -> dict:
    return {k: [int(v[0]), float(v[1])] for k, v in table.items()}


def test_shapes_config_keeps_fractional_weights_and_the_seed():
    """data.qa_weights / kind_weights keep fractional weights (spatial: 0.5 is half as often, not never) and
    data.seed seeds the world."""
    cfg = shapes_config({"seed": 9, "qa_weights": {"colour": 1, "spatial": 0.5},
                         "kind_weights": {"qa": 2.5, "caption": 1}})
    assert cfg.seed == 9 and cfg.qa_weights == (("colour", 1.0), ("spatial", 0.5))
    assert cfg.kind_weights == (("qa", 2.5), ("caption", 1.0))


def test_dpo_task_trains_the_policy_against_a_frozen_copy_of_the_start(tmp_path, monkeypatch):
    """task dpo: the reference is a frozen copy of the (weakened) start sharing no tensor with the policy, and it
    ends where it started while the policy moves; with method.rejected: model the pairs trained on carry the start
    model's own wrong answers (no more than eval.json's share) and the recipe's chosen answers."""
    seen = _caught_fit(monkeypatch, dpo_task)
    recipe = load_recipe(POST / "dpo.yaml", SMALL + ["data.n=16", "method.rejected=model", f"train.out_dir={tmp_path}"])
    run_recipe(recipe)
    policy, ref = seen["objective"].policy, seen["objective"].reference
    shared = {p.data_ptr() for p in policy.parameters()} & {p.data_ptr() for p in ref.parameters()}
    assert ref is not policy, "the reference is the policy itself"
    assert not shared, f"{len(shared)} tensors shared by the policy and the reference"
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    start = load_start(recipe["model"])[0].state_dict()
    assert _same(ref.state_dict(), start) and not _same(policy.state_dict(), start)
    pairs, plausible = seen["dataset"], pair_dataset(recipe)
    assert len(pairs) == len(plausible) == 16 and all(pairs[i].chosen == plausible[i].chosen for i in range(16))
    mined = sum(pairs[i].rejected != plausible[i].rejected for i in range(16))
    share = json.loads((tmp_path / "eval.json").read_text())["share_model_rejected"]
    assert 0 < mined <= round(share * 16)   # a mined answer may be the plausible one too


def test_rm_task_trains_on_the_recipe_pairs_and_reports_held_out_ones(tmp_path, monkeypatch):
    """task rm: the reward model trains on the recipe's pairs and is scored on others (the eval-seed pairs):
    eval.json's before row is the untrained model's (the head drawn after the recipe's seed) and its after row the
    exported model's, accuracy and margin, each recomputed here on the eval-seed pairs."""
    seen = _caught_fit(monkeypatch, rm_task)
    recipe = load_recipe(POST / "rm.yaml", SMALL + [f"train.out_dir={tmp_path}"])
    path = run_recipe(recipe)
    train_pairs, heldout = pair_dataset(recipe), pair_dataset(recipe, n=8, seed=EVAL_SEED)
    assert len(seen["dataset"]) == len(train_pairs) == recipe["data"]["n"]
    assert all(seen["dataset"][i].chosen == train_pairs[i].chosen for i in range(8))
    assert [train_pairs[i].images[0].tobytes() for i in range(8)] != [heldout[i].images[0].tobytes() for i in range(8)]
    result, processor = json.loads((tmp_path / "eval.json").read_text()), load_processor(path)
    torch.manual_seed(recipe["seed"])
    untrained = RewardModel(load_model(ocellus.default_model_dir()))
    for row, model in (("before", untrained), ("after", RewardModel.from_dir(path))):
        accuracy, margin = pair_accuracy(model, processor, heldout)
        assert result[row]["pair accuracy"] == [8, accuracy]
        assert abs(result[f"margin_{row}"] - margin) < 1e-5, (row, result[f"margin_{row}"], margin)


def test_distill_task_trains_the_shrunk_student_under_a_frozen_teacher(tmp_path, monkeypatch):
    """task distill: the student (the teacher's decoder layers method.student_layers) is what trains and is
    exported; the teacher is frozen, in eval mode and ends as it started; eval.json's before row scores the
    untrained student and its teacher row the teacher."""
    seen = _caught_fit(monkeypatch, distill_task)
    recipe = load_recipe(POST / "distill.yaml", SMALL + [f"train.out_dir={tmp_path}"])
    path = run_recipe(recipe)
    student, teacher = seen["objective"].student, seen["objective"]._teacher[0]
    start = load_model(ocellus.default_model_dir())
    layers = recipe["method"]["student_layers"]
    assert len(student.language_model.layers) == len(layers) < len(teacher.language_model.layers)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert _same(teacher.state_dict(), start.state_dict())
    assert _same(ocellus.load(path).state_dict(), student.state_dict())
    result, processor = json.loads((tmp_path / "eval.json").read_text()), load_processor(path)
    assert result["teacher"] == _rows(heldout_qa(start, processor, 8))
    assert result["before"] == _rows(heldout_qa(shrink_decoder(start, tuple(layers)), processor, 8))


def test_rl_reward_weights_reach_the_objective(tmp_path, monkeypatch):
    """method.reward_weights weigh the reward functions in the GRPO objective the task builds (not 1 each), and a
    count that does not match the functions is refused when the recipe is read."""
    import pytest

    from ocellus.errors import ConfigError
    from ocellus.train import grpo as grpo_run
    from ocellus.train.posttrain import reward_functions
    from ocellus.train.rewards import count_format_reward, count_reward

    seen = {}

    class Caught(Exception):
        pass

    def caught(objective, *args):
        seen["objective"] = objective
        raise Caught   # stop before training: only the wiring is asked
    monkeypatch.setattr(grpo_run, "rl_fit", caught)
    recipe = load_recipe(POST / "grpo.yaml", SMALL + ["eval.n=2", f"train.out_dir={tmp_path}",
                                                      "method.rewards=[count, count_format]",
                                                      "method.reward_weights=[2.0, 0.25]"])
    with pytest.raises(Caught):
        run_recipe(recipe)
    objective = seen["objective"]
    assert objective.reward_fns == [count_reward, count_format_reward]
    assert list(objective.reward_weights) == [2.0, 0.25]
    with pytest.raises(ConfigError, match="2 weights for 1 reward"):
        reward_functions({"rewards": ["count"], "reward_weights": [1, 2]}, None)


def test_posttrain_history_numbers_optimizer_steps_under_grad_accum(tmp_path):
    """With train.grad_accum 2 the objective records each micro-batch; posttrain.jsonl numbers them by optimizer
    step (two records a step, each with that step's loss from the trainer), not one step a micro-batch."""
    recipe = load_recipe(POST / "dpo.yaml", SMALL + ["data.n=16", "train.grad_accum=2", f"train.out_dir={tmp_path}"])
    run_recipe(recipe)
    rows = [json.loads(line) for line in (tmp_path / "posttrain.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 2, 2]
    metrics = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
               if "loss" in r}
    assert all(r["loss"] == metrics[r["step"]] for r in rows), (rows, metrics)
