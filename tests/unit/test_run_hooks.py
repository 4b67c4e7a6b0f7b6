"""The shared run loop's small decisions, each on its own: eval.n must be at least 1 for evaluation during
training; export.dir, when given, is where the model and its card go (else out/model); model.init_from may name a
run's checkpoints/ folder, whose `latest` pointer picks the step whose tensors are loaded."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from ocellus.errors import ConfigError
from ocellus.train import run


@pytest.mark.parametrize("n, ok", [(0, False), (-3, False), (True, False), (1, True), (200, True)])
def test_eval_n_must_be_a_positive_integer(n, ok):
    recipe = {"task": "vlm", "eval": {"task": "shapes-vqa", "n": n}}
    cfg = SimpleNamespace(eval_every=5)
    if ok:
        assert run._eval_spec(recipe, cfg) == ("shapes-vqa", n)
    else:
        with pytest.raises(ConfigError, match="eval.n must be a positive integer"):
            run._eval_spec(recipe, cfg)


class _Task:
    """A Trainer task whose export writes a config.json where it is told."""

    @staticmethod
    def export(recipe, model, tok, path: Path) -> Path:
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"model_type": "ocellus_x", "architectures": ["X"]}))
        return path


def test_export_goes_to_export_dir_when_given(tmp_path):
    recipe = {"task": "lm", "name": "r", "export": {"dir": str(tmp_path / "elsewhere")}}
    path = run.export(recipe, None, None, tmp_path / "out", _Task)
    assert path == tmp_path / "elsewhere" and (path / "README.md").is_file()
    assert not (tmp_path / "out" / "model").exists()
    default = run.export({"task": "lm", "name": "r"}, None, None, tmp_path / "out", _Task)
    assert default == tmp_path / "out" / "model" and (default / "README.md").is_file()


def _step(root: Path, name: str, value: float) -> None:
    (root / name).mkdir(parents=True)
    save_file({"weight": torch.full((2, 2), value)}, str(root / name / "model.safetensors"))
    (root / name / "state.json").write_text("{}")


def test_init_from_a_checkpoints_folder_loads_its_latest_step(tmp_path):
    root = tmp_path / "checkpoints"
    _step(root, "step-000002", 2.0)
    _step(root, "step-000004", 4.0)
    (root / "latest").write_text("step-000004")
    model = torch.nn.Linear(2, 2, bias=False)
    run._init_from(model, root)
    assert (model.weight == 4.0).all()
    run._init_from(model, root / "step-000002")                       # a step folder itself
    assert (model.weight == 2.0).all()
