"""The side-by-side comparison of vision-language families (ocellus/compare.py) at toy scale."""
import json

import pytest

from ocellus.errors import ConfigError
from ocellus.compare import main, recipe_for
from ocellus.train.tasks import validate


def test_every_family_gets_the_same_recipe_but_its_bridge(tmp_path):
    a, b = recipe_for("llava", tmp_path, tmp_path / "a", 10, 4), recipe_for("blip2", tmp_path, tmp_path / "b", 10, 4)
    validate(a)
    for key in ("data", "tokenizer", "seed"):
        assert a[key] == b[key]
    assert {k: v for k, v in a["train"].items() if k != "out_dir"} == \
        {k: v for k, v in b["train"].items() if k != "out_dir"}
    assert a["model"]["architecture"] == "llava" and b["model"]["architecture"] == "blip2"
    with pytest.raises(ConfigError, match="unknown family"):
        recipe_for("gpt4v", tmp_path, tmp_path, 1, 1)


def test_compare_trains_evaluates_and_writes_the_table(tmp_path, tiny_vlm_parts):
    out = tmp_path / "cmp.md"
    main(["--families", "llava", "--parts", str(tiny_vlm_parts), "--runs", str(tmp_path / "runs"), "--steps", "3",
          "--batch-size", "4", "--n-eval", "10", "--lr", "5e-4", "--out", str(out)])
    assert json.loads((tmp_path / "runs" / "llava" / "recipe.json").read_text())["train"]["lr"] == 5e-4
    row = json.loads(out.with_suffix(".json").read_text())[0]
    assert row["family"] == "llava" and row["image_tokens"] == 65   # 48 px / patch 6 = 64 patches + CLS
    assert 0.0 <= row["vqa"]["all"] <= 1.0 and row["params"] > row["bridge_params"] > 0
    assert "| llava | all tokens | 65 | 65 |" in out.read_text()
