"""A new user's wrong turns end in one line that says what is wrong and what to do (exit 2, no traceback):
evaluating a text-only model on an image task, sampling images from a vision-language model, training a recipe
before the one that writes its input, benchmarking without the optional dependency that benchmark needs."""
from pathlib import Path

import pytest
import yaml

import ocellus
import ocellus.train.run
from ocellus.cli import main
from ocellus.demo import make_tiny_checkpoint
from ocellus.train import schema
from ocellus.train.recipe import POSTTRAIN_TASKS, TASKS, load_recipe, made_by, recipe_task

ROOT = Path(__file__).resolve().parents[2]


def _one_line(capsys, kind: str) -> str:
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"ocellus: error: {kind}: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("text"))


@pytest.mark.parametrize("task", ["shapes-vqa", "shapes-caption", "shapes-grounding", "digits"])
def test_eval_image_task_on_a_text_only_model(text_only, task, capsys):
    assert main(["eval", "--model", str(text_only), "--task", task, "--n", "2"]) == 2
    err = _one_line(capsys, "ConfigError")
    assert f"--task {task} asks questions about images" in err and f"{text_only} is a text-only checkpoint" in err
    assert f"give --model a vision-language model directory, e.g. {ocellus.default_model_dir()}" in err


@pytest.mark.parametrize("which", ["vlm", "text"])
def test_generate_image_on_a_language_model_names_what_it_is(which, text_only, tmp_path, capsys):
    model = ocellus.default_model_dir() if which == "vlm" else text_only
    assert main(["generate-image", "--model", str(model), "--prompt", "3", "--out", str(tmp_path / "g.png")]) == 2
    err = _one_line(capsys, "CheckpointError")
    assert f"holds a {'llava' if which == 'vlm' else 'llama'!r} model, not an image generator" in err
    assert "image_generation recipe" in err and "ocellus generate / chat" in err and "None" not in err
    assert not (tmp_path / "g.png").exists()


def _chain(tmp_path) -> Path:
    """The shipped align and sft recipes in a folder of their own, writing under tmp_path."""
    folder = tmp_path / "recipes" / "llava"
    folder.mkdir(parents=True)
    for name in ("align", "sft"):
        recipe = yaml.safe_load((ROOT / "recipes" / "llava_tiny_shapes" / f"{name}.yaml").read_text())
        recipe["train"]["out_dir"] = str(tmp_path / "runs" / name)
        if name == "sft":
            recipe["model"]["from"] = str(tmp_path / "runs" / "align" / "model")
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def test_sft_before_align_names_the_recipe_to_run_first(tmp_path, monkeypatch, capsys):
    """Before: "no tokenizer.json in runs/.../align/model: ... convert a sentencepiece checkpoint" (wrong)."""
    monkeypatch.setattr(ocellus.train.run, "run_recipe", lambda recipe: pytest.fail("reached training"))
    folder = _chain(tmp_path)
    assert main(["train", str(folder / "sft.yaml")]) == 2
    err = _one_line(capsys, "ConfigError")
    assert f"model.from {tmp_path / 'runs' / 'align' / 'model'} does not exist yet" in err
    assert f"run `ocellus train {folder / 'align.yaml'}` first" in err and "tokenizer.json" not in err
    assert main(["train", str(folder / "align.yaml"), f"model.vision_from={tmp_path / 'nowhere'}"]) == 2
    assert f"model.vision_from {tmp_path / 'nowhere'} does not exist" in _one_line(capsys, "ConfigError")


def test_every_shipped_chain_input_names_the_recipe_that_writes_it():
    """Each checkpoint a shipped recipe reads from runs/ is the export (or under the out_dir) of another shipped
    recipe, so a step run too early always says which one to run first."""
    inputs = {}   # (path read, the reading recipe's folder) -> a recipe reading it (made_by looks beside it)
    for path in sorted((ROOT / "recipes").glob("**/*.yaml")):
        if recipe_task(path) in TASKS + POSTTRAIN_TASKS:
            inputs.update({(value, path.parent): path for _, value in schema.sources(load_recipe(path))
                           if value.startswith("runs/")})
    assert len(inputs) >= 10
    for (value, _), path in inputs.items():
        maker = made_by(value, path)
        assert maker is not None and Path(maker) != path, (path, value)
