"""The recipe tasks as one table (ocellus/train/tasks/__init__.py TASKS): every task's module provides validate /
run / export (the Trainer tasks also the build hooks run.run_trainer calls), an unknown task is refused naming
every known one, and `ocellus train` and recipe validation accept exactly the table's tasks (nothing patched:
the CLI has no list of its own)."""
import importlib
import json
import shutil

import pytest
import torch
import yaml

import ocellus

from ocellus.cli import main
from ocellus.errors import ConfigError
from ocellus.train.run import run_method
from ocellus.train.tasks import load_recipe, run_recipe, shared_schema, task_module, TASKS, validate

BUILD_HOOKS = ("build_tokenizer", "build_model", "build_dataset")
NOT_TASKS = ("rlhf", "posttrain", "sft", "generative", "LM", "")


def test_every_task_module_provides_validate_run_and_export():
    for name in TASKS:
        module = task_module(name)
        assert module is importlib.import_module(TASKS[name])
        for hook in ("validate", "run", "export"):
            assert callable(getattr(module, hook, None)), f"task {name}: {TASKS[name]} has no {hook}"
        hooks = [h for h in BUILD_HOOKS if hasattr(module, h)]
        assert hooks in ([], list(BUILD_HOOKS)), f"task {name}: a Trainer task needs all of {BUILD_HOOKS}, has {hooks}"
    trainer_tasks = {name for name in TASKS if hasattr(task_module(name), "build_model")}
    assert trainer_tasks == {"lm", "vit_classify", "vlm", "qformer_pretrain", "contrastive", "moco", "albef", "blip"}
    assert {name for name in TASKS if not shared_schema(name)} == {"image_generation", "unified", "seed_tokenizer"}


def test_an_unknown_task_is_refused_naming_every_known_one(tmp_path, capsys):
    with pytest.raises(ConfigError, match="task must be one of") as err:
        validate({"task": "rlhf", "data": {"source": "shapes"}, "train": {"max_steps": 1}})
    assert all(name in str(err.value) for name in TASKS) and "'rlhf'" in str(err.value)
    with pytest.raises(ConfigError, match="task must be one of"):
        run_recipe({"task": "rlhf", "data": {}})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"task": "rlhf"}))
    with pytest.raises(ConfigError, match=f"{path}: task must be one of"):
        load_recipe(path)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and all(name in err for name in TASKS)


def _accepted_by_the_cli(name: str, folder, capsys) -> bool:
    path = folder / f"{name or 'empty'}.yaml"
    path.write_text(yaml.safe_dump({"task": name, "train": {"max_steps": 1}}))
    assert main(["train", str(path)]) == 2      # every one of these recipes is incomplete: refused, never trained
    err = capsys.readouterr().err
    assert err.startswith("ocellus: error: ConfigError"), err
    return "task must be one of" not in err


def _accepted_by_validation(name: str) -> bool:
    try:
        validate({"task": name, "train": {"max_steps": 1}})
    except ConfigError as e:
        return "task must be one of" not in str(e)
    raise AssertionError(f"an incomplete recipe of task {name!r} validated")


def test_the_cli_and_recipe_validation_accept_exactly_the_table(tmp_path, capsys):
    candidates = [*TASKS, *NOT_TASKS]
    cli = {name for name in candidates if _accepted_by_the_cli(name, tmp_path, capsys)}
    checked = {name for name in candidates if _accepted_by_validation(name)}
    assert cli == checked == set(TASKS)


def test_a_post_training_run_gets_its_recipe_and_the_recipes_model_card(tmp_path):
    """run.run_method, what every post-training task runs through: the method runs in train.out_dir after the
    recipe's seed, recipe.json is written beside it, and its export gets the model card of the recipe that made it
    (its name, task, schedule, data), as a Trainer task's export does."""
    seen = {}

    def method(recipe, cfg, out):
        seen.update(draw=torch.rand(3), out=out, steps=cfg.max_steps)
        return shutil.copytree(ocellus.default_model_dir(), out / "model")   # stands for the trained policy
    recipe = {"task": "dpo", "name": "dpo_card", "seed": 7, "model": {"from": "default"},
              "data": {"source": "shapes", "n": 16}, "train": {"max_steps": 3, "batch_size": 4, "out_dir": str(tmp_path)},
              "_path": "recipes/posttrain/dpo.yaml"}
    path = run_method(recipe, method)
    assert path == tmp_path / "model" and seen["out"] == tmp_path and seen["steps"] == 3
    torch.manual_seed(7)
    assert torch.equal(seen["draw"], torch.rand(3))                   # the method ran after the recipe's seed
    assert json.loads((tmp_path / "recipe.json").read_text()) == {k: v for k, v in recipe.items() if k != "_path"}
    card = (path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ocellus\npipeline_tag: image-text-to-text\n")
    assert "# dpo_card" in card and "recipe `dpo_card` (task `dpo`)" in card and "3 steps of batch 4" in card
    assert "16 generated samples" in card and "<image>" in card      # the prompt format shows where the image goes


BASE = {"data": {"source": "shapes"}, "train": {"max_steps": 1}}


@pytest.mark.parametrize("task, change, message", [
    ("lm", {"data": {"source": "shapes_text"}, "train": {"max_steps": 1, "stage": {"connector": "full"}}},
     r"task 'lm' has no parts \['connector'\]"),
    ("moco", {"train": {"max_steps": 1, "stage": {"text": "full"}}}, r"task 'moco' has no parts \['text'\]"),
    ("vit_classify", {"data": {"source": "shapes_text"}}, "task 'vit_classify' trains on images"),
    ("lm", {}, "task 'lm' pretrains the decoder on text"),
    ("qformer_pretrain", {"data": {"source": "shapes_text"}}, "task 'qformer_pretrain' trains on images"),
    ("albef", {"data": {"source": "shapes_text"}}, "task 'albef' trains on images"),
    ("vlm", {"model": {"llm_from": "x"}}, "model needs `from`"),
    ("vlm", {"model": {"from": "x"}, "train": {"max_steps": 1, "stage": {"vision": "frozen", "connector": "frozen",
                                                                       "llm": "frozen"}}}, "nothing would train"),
    ("grpo", {"model": {}}, "task 'grpo' needs model.from"),
    ("rm", {"model": {"from": "default"}, "data": {"source": "digits"}}, "task 'rm' builds its preference pairs"),
])
def test_each_task_validates_by_its_own_rules(task, change, message):
    with pytest.raises(ConfigError, match=message):
        validate({"task": task, **BASE, **change})


@pytest.mark.parametrize("task, change", [
    ("contrastive", {"train": {"max_steps": 1, "stage": {"vision": "full", "text": "frozen"}}}),   # any parts
    ("vlm", {"model": {"from": "x"}, "train": {"max_steps": 1, "stage": {"vision": "frozen", "llm": "frozen"}}}),
    ("distill", {"model": {"from": "default"}, "train": {"max_steps": 1, "stage": {"llm": "full"}}}),
    ("lm", {"data": {"source": "shapes_text"}, "train": {"max_steps": 1, "stage": {"llm": "lora"}}}),
])
def test_what_a_task_allows_validates(task, change):
    validate({"task": task, **BASE, **change})
