"""Recipe checks at their boundaries (train/recipe.py): an override splits at its first '=' only (a value may hold
'='); a streamed source's shuffle_buffer must be >= 1 (a buffer of 0 holds no row) while num_workers may be 0 (read in
the training process)."""
from pathlib import Path

import pytest

from ocellus.errors import ConfigError
from ocellus.train.recipe import apply_overrides
from ocellus.train.tasks import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHARDS = ["data.source=shards", "data.urls=shards/shard-{000..001}.tar", "eval=null"]


def test_an_override_splits_at_its_first_equals_sign():
    recipe = apply_overrides({"train": {"lr": 1.0}}, ["data.path=runs/a=b/data.json", "train.lr=3e-4",
                                                      "export.dir=x=="])
    assert recipe == {"train": {"lr": 3e-4}, "data": {"path": "runs/a=b/data.json"}, "export": {"dir": "x=="}}


def test_shuffle_buffer_at_least_one_and_workers_at_least_zero():
    path = RECIPES / "moco_tiny_shapes" / "moco.yaml"
    with pytest.raises(ConfigError, match=r"data.shuffle_buffer must be >= 1, got 0"):
        load_recipe(path, SHARDS + ["data.shuffle_buffer=0"])
    with pytest.raises(ConfigError, match=r"data.num_workers must be >= 0, got -1"):
        load_recipe(path, SHARDS + ["data.num_workers=-1"])
    recipe = load_recipe(path, SHARDS + ["data.shuffle_buffer=1", "data.num_workers=0"])
    assert recipe["data"]["shuffle_buffer"] == 1 and recipe["data"]["num_workers"] == 0
