"""Every shipped recipe validates; bad recipes are errors naming the problem; the four-step
llava_tiny_shapes pipeline runs end to end for a few steps and each step's loss falls."""
import json
import tempfile
from pathlib import Path

import pytest

from ocellus.errors import ConfigError
from ocellus.train.recipe import apply_overrides, recipe_task
from ocellus.train.tasks import load_recipe, run_recipe, shared_schema, TASKS, validate

RECIPES = sorted(Path(__file__).resolve().parents[2].glob("recipes/**/*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipe_validates(path):
    """Each recipe through the checks of the runner `ocellus train` (or its module) hands it to."""
    import yaml

    from ocellus.train import capfilt, generative
    if recipe_task(path) == generative.TASK:
        assert generative.load_generative_recipe(path)["task"] == generative.TASK
    elif path.name == "capfilt.yaml":
        assert capfilt.check_config(yaml.safe_load(path.read_text()))["task"] == "blip"
    elif recipe_task(path) == "unified":
        from ocellus.train import unified
        assert unified.load_unified_recipe(path)["task"] == unified.TASK
    elif recipe_task(path) == "seed_tokenizer":
        from ocellus.train import seed_tokenizer_run
        assert seed_tokenizer_run.load_seed_recipe(path)["task"] == seed_tokenizer_run.TASK
    else:
        assert load_recipe(path)["task"] in [t for t in TASKS if shared_schema(t)]


def test_overrides_and_errors(tmp_path):
    base = {"task": "vlm", "model": {"from": "x"}, "data": {"source": "shapes"}, "train": {"max_steps": 1}}
    r = apply_overrides(base, ["train.lr=3e-4", "train.stage.llm=lora", "data.n=7"])
    assert r["train"]["lr"] == 3e-4 and r["train"]["stage"] == {"llm": "lora"} and r["data"]["n"] == 7
    with pytest.raises(ConfigError, match="not key=value"):
        apply_overrides(base, ["train.lr"])
    cases = [
        ({**base, "task": "lm"}, "'lm' pretrains the decoder on text"),
        ({**base, "data": {"source": "shapes_text"}}, "trains on images but data.source 'shapes_text'"),
        ({**base, "train": {"max_steps": 1, "learning_rate": 1}}, "unknown train keys \\['learning_rate'\\]"),
        ({**base, "optimizer": {}}, "unknown top-level keys \\['optimizer'\\]"),
        ({**base, "train": {"max_steps": 0}}, "must be positive"),
        ({**base, "train": {"max_steps": 1, "stage": {"vision": "frozen", "connector": "frozen", "llm": "frozen"}}},
         "nothing would train"),
        ({**base, "train": {"max_steps": 1, "stage": {"llm": "half"}}}, "train.stage.llm must be one of frozen, full, lora"),
        ({**base, "model": {}}, "model needs"),
    ]
    for recipe, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate(recipe)


def _falls(out: Path) -> bool:
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return losses[-1] < losses[0]


def test_tiny_shapes_pipeline_runs_and_learns(tmp_path, tiny_vlm_parts):
    root = Path(__file__).resolve().parents[2] / "recipes" / "llava_tiny_shapes"
    small = ["train.progress=false", "train.log_every=2", "train.warmup_steps=2"]
    text, vit = tiny_vlm_parts / "text", tiny_vlm_parts / "vit"  # the recipes' steps 1-2 (conftest.py)
    align = tmp_path / "align"
    run_recipe(load_recipe(root / "align.yaml", small + [
        f"train.out_dir={align}", "train.max_steps=6", "data.n=100", f"model.vision_from={vit}/model",
        f"model.llm_from={text}/model", f"tokenizer.from={text}/model", "train.batch_size=8"]))
    sft = tmp_path / "sft"
    run_recipe(load_recipe(root / "sft.yaml", small + [
        f"train.out_dir={sft}", "train.max_steps=6", "data.n=100", f"model.from={align}/model",
        "train.batch_size=8"]))
    for out in (text, vit, align, sft):
        assert _falls(out), out.name
        assert (out / "curve.png").exists() and (out / "model" / "config.json").exists()
    import ocellus
    tok = ocellus.load_processor(sft / "model")
    assert tok.image_token_id == ocellus.load(sft / "model").image_token_id
    tok = getattr(tok, "tokenizer", tok)
    assert len(tok.encode("assistant")) == len(tok.encode("user")) == 1  # role names are in the BPE corpus


def test_text_pretraining_data_stands_scene_text_in_for_the_image():
    """data.image_text puts the scene's description (or caption) where the image was; train_on picks
    which tokens are trained: all of them (GPT-style) or the assistant's replies only."""
    import ocellus
    from ocellus.data.shapes import sample_at
    from ocellus.demo import make_tiny_checkpoint
    from ocellus.train.recipe_data import shapes_config as _shapes_config
    from ocellus.train.tasks import build_dataset
    with tempfile.TemporaryDirectory() as d:
        tok = ocellus.load_processor(make_tiny_checkpoint(d))
    base = {"task": "lm", "data": {"source": "shapes_text", "kind": "qa", "n": 4, "seed": 3, "image_size": 48}}
    scene = sample_at(_shapes_config(base["data"]), 0, "qa")
    texts = {}
    for how in ("drop", "description", "caption"):
        recipe = {**base, "data": {**base["data"], "image_text": how}}
        ds, _ = build_dataset(recipe, tok, None)
        texts[how] = tok.decode(ds[0].input_ids)
    colours = [o["colour"] for o in scene["objects"]]
    assert all(c in texts["description"] and c in texts["caption"] for c in colours)
    assert len(texts["drop"]) < len(texts["caption"]) < len(texts["description"])
    every = build_dataset(base, tok, None)[0][0]
    replies = build_dataset({**base, "data": {**base["data"], "train_on": "assistant"}}, tok, None)[0][0]
    assert every.num_trained > replies.num_trained > 0
    answer = tok.decode([t for t in replies.labels if t != -100])
    assert answer.startswith(scene["answer"])
    with pytest.raises(ConfigError, match="image_text"):
        build_dataset({**base, "data": {**base["data"], "image_text": "pixels"}}, tok, None)


def test_patch_classes_mark_the_patches_an_object_covers():
    """ViT scene pretraining's per-patch targets: the object's class where it covers a patch, the
    background class elsewhere, row-major like the ViT's patch tokens."""
    import numpy as np
    from ocellus.data.shapes import Obj, Scene, render
    from ocellus.train.vit_scene import patch_classes
    classes = [("square", "red"), ("circle", "blue")]
    scene = Scene(48, "white", (Obj("square", "red", (6, 0, 18, 12)), Obj("circle", "blue", (30, 30, 47, 47))))
    grid = patch_classes(scene, render(scene), classes, patch=6, size=48).reshape(8, 8).numpy()
    expected = np.full((8, 8), 2)
    expected[0:2, 1:3] = 0          # the square: rows 0-1, columns 1-2 (x before y in the box)
    expected[5:8, 5:8] = 1          # the circle's 3x3 patches (corners included: > 10% of each)
    assert (grid == expected).all(), grid
