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


def test_a_missing_bare_name_is_an_error_and_an_org_name_is_left_to_the_hub():
    from ocellus.train.recipe import check_sources
    path = RECIPES / "posttrain" / "rm.yaml"
    recipe = load_recipe(path, ["model.from=hdepth_no_such_model"])
    with pytest.raises(ConfigError, match="model.from hdepth_no_such_model does not exist"):
        check_sources(recipe, str(path))
    check_sources(load_recipe(path, ["model.from=hdepth-org/no-such-model"]), str(path))   # a hub id: the loader's


def test_vit_classify_box_loss_needs_object_labels():
    from ocellus.train.tasks.vit_classify import build_model
    config = {"model_type": "clip_vision_model", "image_size": 16, "patch_size": 4, "hidden_size": 32,
              "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2}
    recipe = {"model": {"config": config, "num_classes": 3, "box_loss": 0.5}, "data": {"source": "shapes"}}
    with pytest.raises(ConfigError, match="model.box_loss needs data.labels: objects"):
        build_model(recipe, None)
    assert build_model({**recipe, "model": {**recipe["model"], "box_loss": 0.0}}, None).classifier.out_features == 3
