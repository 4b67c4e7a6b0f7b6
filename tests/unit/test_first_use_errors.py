"""A new user's wrong turns end in one line that says what is wrong and what to do (exit 2, no traceback):
evaluating a text-only model on an image task, sampling images from a vision-language model, training a recipe
before the one that writes its input, benchmarking without the optional dependency that benchmark needs."""
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import ocellus
import ocellus.train.tasks
from ocellus.cli import main
from ocellus.demo import make_tiny_checkpoint
from ocellus.train import schema
from ocellus.train.recipe import made_by, recipe_task
from ocellus.train.tasks import load_recipe, shared_schema, TASKS

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
    monkeypatch.setattr(ocellus.train.tasks, "run_recipe", lambda recipe: pytest.fail("reached training"))
    folder = _chain(tmp_path)
    assert main(["train", str(folder / "sft.yaml")]) == 2
    err = _one_line(capsys, "ConfigError")
    assert f"model.from {tmp_path / 'runs' / 'align' / 'model'} does not exist yet" in err
    assert f"run `ocellus train {folder / 'align.yaml'}` first" in err and "tokenizer.json" not in err
    # the other inputs exist (so this holds in a checkout without runs/): the missing one is named
    assert main(["train", str(folder / "align.yaml"), f"model.vision_from={tmp_path / 'nowhere'}",
                 f"model.llm_from={tmp_path}", f"tokenizer.from={tmp_path}"]) == 2
    assert f"model.vision_from {tmp_path / 'nowhere'} does not exist" in _one_line(capsys, "ConfigError")


def test_every_shipped_chain_input_names_the_recipe_that_writes_it():
    """Each checkpoint a shipped recipe reads from runs/ is the export (or under the out_dir) of another shipped
    recipe, so a step run too early always says which one to run first."""
    inputs = {}   # (path read, the reading recipe's folder) -> a recipe reading it (made_by looks beside it)
    for path in sorted((ROOT / "recipes").glob("**/*.yaml")):
        if recipe_task(path) in [t for t in TASKS if shared_schema(t)]:
            inputs.update({(value, path.parent): path for _, value in schema.sources(load_recipe(path))
                           if value.startswith("runs/")})
    assert len(inputs) >= 10
    for (value, _), path in inputs.items():
        maker = made_by(value, path)
        assert maker is not None and Path(maker) != path, (path, value)


@pytest.mark.parametrize("what", ["decode", "encode", "train"])
def test_bench_without_transformers_names_the_extra(what, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)   # `import transformers` fails as if not installed
    assert main(["bench", what]) == 2
    assert "transformers is not installed: pip install 'ocellus[bench]'" in _one_line(capsys, "ConfigError")


def test_digits_without_scikit_learn_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["eval", "--model", str(ocellus.default_model_dir()), "--task", "digits", "--n", "2"]) == 2
    assert "pip install 'ocellus[digits]'" in _one_line(capsys, "ConfigError")


def test_readme_names_for_each_command_an_extra_pyproject_has():
    """The README's command table says which optional extra each command needs; each one it names exists,
    and holds the package the command's error message asks for."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("transformers") for r in extras["bench"])
    assert any(r.startswith("scikit-learn") for r in extras["digits"])
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `ocellus") or line.startswith("| `python -m")]
    assert len(rows) >= 10 and all(line.count(" | ") == 2 for line in rows), rows   # three cells each
    named = {word.strip("`") for line in rows for word in line.rsplit(" | ", 1)[1].split() if word.startswith("`")}
    assert {"bench", "digits"} <= named and {n for n in named if n.isidentifier()} <= set(extras), named
    bench = next(line for line in rows if line.startswith("| `ocellus bench"))
    assert "`bench`" in bench.rsplit(" | ", 1)[1]
