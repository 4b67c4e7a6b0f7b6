"""The recipe tasks as one table: `task:` -> the module that validates, runs and exports it, imported on first
use. `ocellus train` (cli.py), recipe loading and validation (load_recipe, validate) and the runner
(run_recipe) all read TASKS; nothing else dispatches on a task's name.

Every task module provides
    validate(recipe, where)          every check that can run before anything is built (ConfigError naming the key)
    run(recipe)                      train a validated recipe -> its export dir (the own-schema runners: their results)
    export(recipe, model, tok, path) write the trained model in the task's layout -> path
and the Trainer tasks (lm, vit_classify, vlm, qformer_pretrain, contrastive, moco, albef, blip) the hooks
run.run_trainer calls: build_tokenizer(recipe, out), build_model(recipe, tok), build_dataset(recipe, tok,
model). Optional flags: PACKS (data.pack packs its batches), OWN_SCHEMA (the recipe's top level is its runner's
own: schema.runner_fields; no shared model / data sections to look for sources in).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ocellus.data.hf_dataset import given
from ocellus.errors import ConfigError
from ocellus.train import recipe as recipes
from ocellus.train.recipe import read_recipe
from ocellus.train.run import model_for

TASKS = {
    "lm": "ocellus.train.tasks.lm",                                 # next-token pretraining on text
    "vit_classify": "ocellus.train.tasks.vit_classify",             # ViT + head on image labels
    "vlm": "ocellus.train.tasks.vlm",                               # LLaVA-style and the other VLM families
    "qformer_pretrain": "ocellus.train.tasks.qformer_pretrain",     # BLIP-2 stage 1
    "contrastive": "ocellus.train.tasks.contrastive",               # CLIP / SigLIP
    "moco": "ocellus.train.tasks.contrastive",                      # MoCo v2
    "albef": "ocellus.train.tasks.albef_blip",
    "blip": "ocellus.train.tasks.albef_blip",
    "rm": "ocellus.train.tasks.rm",                                 # post-training: run.run_method
    "dpo": "ocellus.train.tasks.dpo",
    "grpo": "ocellus.train.tasks.grpo",
    "ppo": "ocellus.train.tasks.ppo",
    "distill": "ocellus.train.tasks.distill",
    "image_generation": "ocellus.train.tasks.image_generation",     # runners with a schema of their own
    "unified": "ocellus.train.tasks.unified",
    "seed_tokenizer": "ocellus.train.tasks.seed_tokenizer",
}


def task_module(name, where: str = "recipe"):
    """The module of task `name` (imported now if it was not yet); ConfigError naming every known task."""
    if name not in TASKS:
        raise ConfigError(f"{where}: task must be one of {', '.join(TASKS)}, got {name!r}")
    return importlib.import_module(TASKS[name])


def validate(recipe: dict, where: str = "recipe") -> None:
    task_module(recipe.get("task"), where).validate(recipe, where)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """The recipe at `path` with its overrides, validated by its task; `name` defaults to the file's stem and
    `_path` records where it was read (check_sources looks beside it, runners name it in errors)."""
    path = Path(path)
    recipe = read_recipe(path, overrides)
    recipe.setdefault("name", path.stem)
    recipe["_path"] = str(path)
    validate(recipe, where=str(path))
    return recipe


def shared_schema(name: str) -> bool:
    """Whether task `name`'s recipes follow the shared schema (schema.top_fields: model / data / method sections
    by task), not a runner's own (OWN_SCHEMA: image_generation, unified, seed_tokenizer)."""
    return not getattr(task_module(name), "OWN_SCHEMA", False)


def check_sources(recipe: dict, where: str = "recipe") -> None:
    """recipe.check_sources for a task whose recipe follows the shared schema (a missing checkpoint names the
    recipe that writes it); the own-schema runners check their inputs when they read them."""
    if shared_schema(recipe["task"]):
        recipes.check_sources(recipe, where)


def run_recipe(recipe: dict, dataset=None):
    """Train a validated recipe (load_recipe) -> what its task's run returns (the export dir). dataset: a
    `datasets.Dataset` (or DatasetDict, data.split picks) that a `data: {source: hf}` recipe without data.path
    trains on (data/hf_dataset.py; docs/DATA_FORMATS.md)."""
    if dataset is not None:
        if (recipe.get("data") or {}).get("source") != "hf" or recipe["data"].get("path"):
            raise ConfigError("run_recipe(recipe, dataset=...): the recipe must read it: data.source hf without "
                              "data.path")
        with given(dataset):
            return run_recipe(recipe)
    module = task_module(recipe["task"])
    if (recipe.get("data") or {}).get("pack") and not getattr(module, "PACKS", False):
        packers = [name for name in TASKS if getattr(task_module(name), "PACKS", False)]
        raise ConfigError(f"data.pack: packing is not supported for task {recipe['task']!r} (only for "
                          f"{' and '.join(packers)}); leave data.pack unset")
    return module.run(recipe)


def build_model(recipe: dict, tok):
    """A Trainer task's model as run_trainer builds it: model.from's checkpoint or the task's build, then
    model.init_from's tensors."""
    return model_for(recipe, tok, task_module(recipe["task"]))


def build_dataset(recipe: dict, tok, model):
    """A Trainer task's (dataset, collate) as run_trainer builds them."""
    return task_module(recipe["task"]).build_dataset(recipe, tok, model)
