"""`ocellus eval` renders its scenes at the side the model trained on: a recipe's export records it in
config.json (ocellus_scene_size); a tiling family trained on 96 px scenes was scored on 48 px ones before."""
import json
import shutil

import pytest

from ocellus.errors import ConfigError
from ocellus.eval import harness
from ocellus.hub.checkpoint import SCENE_SIZE_KEY, load_model, record_scene_size, trained_scene_size
from ocellus.hub.resolve import default_model_dir
from ocellus.data.processor import load_processor
from ocellus.train.vlm_export import export_vlm


@pytest.fixture()
def model_dir(tmp_path):
    out = tmp_path / "model"
    shutil.copytree(default_model_dir(), out)
    return out


def _rendered_side(monkeypatch, model_dir, **kw) -> int:
    seen = []
    real = harness.task_samples

    def spy(task, n, size, **kwargs):
        seen.append(size)
        return real(task, n, size, **kwargs)
    monkeypatch.setattr(harness, "task_samples", spy)
    result = harness.evaluate(model_dir, "shapes-vqa", n=2, printer=lambda *a: None, **kw)
    assert result["image_size"] == seen[0]
    return seen[0]


def test_eval_renders_at_the_recorded_side_else_the_towers(monkeypatch, model_dir):
    assert trained_scene_size(model_dir) is None
    assert _rendered_side(monkeypatch, model_dir) == 48                 # the tower's input size
    record_scene_size(model_dir, 96)
    assert json.loads((model_dir / "config.json").read_text())[SCENE_SIZE_KEY] == 96
    assert _rendered_side(monkeypatch, model_dir) == 96
    assert _rendered_side(monkeypatch, model_dir, image_size=64) == 64  # --image-size wins


def test_export_records_the_training_side(tmp_path):
    model, processor = load_model(default_model_dir()), load_processor(default_model_dir())
    out = export_vlm(model, processor.tokenizer, 72, tmp_path / "exported")
    assert trained_scene_size(out) == 72
    load_model(out)                                                      # the extra key loads as before


def test_bad_sizes_are_named(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    for bad in ("big", 0, -1, True, 48.0):       # a side is a positive int of pixels: 0 is no size
        (model_dir / "config.json").write_text(json.dumps({**cfg, SCENE_SIZE_KEY: bad}))
        with pytest.raises(ConfigError, match=SCENE_SIZE_KEY):
            trained_scene_size(model_dir)
    with pytest.raises(ConfigError, match="--image-size"):
        harness.evaluate(model_dir, "shapes-vqa", n=2, image_size=0, printer=lambda *a: None)
