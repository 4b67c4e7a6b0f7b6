"""The recipe tasks as one table (ocellus/train/tasks/__init__.py TASKS): every task's module provides validate /
run / export (the Trainer tasks also the build hooks run.run_trainer calls), an unknown task is refused naming
every known one, and `ocellus train` and recipe validation accept exactly the table's tasks (nothing patched:
the CLI has no list of its own)."""
import importlib

import pytest
import yaml

from ocellus.cli import main
from ocellus.errors import ConfigError
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
