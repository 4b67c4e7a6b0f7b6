"""Every recipe key has a type, checked before anything is built: `ocellus train RECIPE key=<wrong type>` exits 2
with one line naming the key and the type it must have, for every key of the schema (train/schema.py), never
a traceback or a run that does something else (`train.max_steps=2.5` ran 3 steps; `train.save_every=x`
crashed after step 1). Unknown keys, model.* ones included, are errors naming the section and the task. The
runners with schemas of their own (image_generation, unified, seed_tokenizer) type their train sections the same way."""
from pathlib import Path

import pytest
import yaml

import ocellus.train.tasks
from ocellus.cli import main
from ocellus.errors import ConfigError
from ocellus.train import generative, schema, seed_tokenizer_run, unified
from ocellus.train.tasks import load_recipe, shared_schema, TASKS


class ReachedTraining(Exception):
    """Raised instead of training: a recipe that got past validation."""


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    def refuse(recipe):
        raise ReachedTraining(recipe["task"])
    monkeypatch.setattr(ocellus.train.tasks, "run_recipe", refuse)


def base_recipe(task: str, architecture: str | None, out_dir) -> dict:
    """The smallest recipe of `task` that validates (nothing is built: training is refused above); its
    checkpoints are empty folders (only their existence is checked before training)."""
    vit, llm = out_dir.parent / "vit", out_dir.parent / "llm"
    vit.mkdir(parents=True, exist_ok=True)
    llm.mkdir(exist_ok=True)
    data = {"source": "shapes_text" if task == "lm" else "shapes"}
    model = {"lm": {}, "vit_classify": {}, "qformer_pretrain": {"vision_from": str(vit)},
             "vlm": {"architecture": architecture, "vision_from": str(vit), "llm_from": str(llm)}
             }.get(task, {"from": "default"})
    return {"task": task, "model": model, "data": data, "train": {"max_steps": 1, "out_dir": str(out_dir)}}


def fields(kinds: dict, prefix: str = ""):
    """(dotted key, Kind) for every key of a section and of the mappings inside it whose keys are known
    (a mapping of any keys, e.g. train.stage, is entered through an example key `k`)."""
    for key, kind in kinds.items():
        dotted = f"{prefix}{key}"
        yield dotted, kind
        if kind.fields is not None:
            yield from fields(kind.fields, dotted + ".")
        elif kind.values is not None:
            yield from fields({"k": kind.values}, dotted + ".")


def every_key():
    """Each dotted key of the schema once, with a task (and vlm architecture) whose recipes have it."""
    seen = {}
    for task in [t for t in TASKS if shared_schema(t)]:
        for arch in (schema.ARCHITECTURES if task == "vlm" else [None]):
            model = {"architecture": arch} if arch else {}
            for dotted, kind in fields(schema.top_fields(task, model)):
                if dotted not in seen and dotted not in ("task", "_path"):   # task: test_recipes.py
                    seen[dotted] = (task, arch, kind)
    return [pytest.param(task, arch, dotted, kind, id=dotted) for dotted, (task, arch, kind) in seen.items()]


def wrong_value(kind) -> str:
    """An override value (YAML) of a type the kind's name rules out."""
    for start, value in [("an integer", "2.5"), ("a number", "abc"), ("true or false", "maybe"),
                         ("a string", "[1, 2]"), ("one of", "nonsense"), ("a mapping", "5"), ("a list", "5"),
                         ("[min, max]", "5")]:
        if kind.name.startswith(start):
            return value
    raise AssertionError(f"no wrong value for {kind.name!r}")


def _train(tmp_path, recipe: dict, *overrides: str) -> int:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return main(["train", str(path), *overrides])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ocellus: error: ConfigError: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("task, arch, key, kind", every_key())
def test_every_key_with_a_wrong_type_is_a_config_error_naming_it(task, arch, key, kind, tmp_path, capsys):
    recipe = base_recipe(task, arch, tmp_path / "run")
    with pytest.raises(ReachedTraining):   # the recipe without the bad value is fine
        _train(tmp_path, recipe)
    assert _train(tmp_path, recipe, f"{key}={wrong_value(kind)}") == 2
    err = _one_error_line(capsys)
    assert f"{key} must be {kind.name}" in err


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=five", "train.max_steps must be an integer, got 'five'"),
    ("train.max_steps=2.5", "train.max_steps must be an integer, got 2.5"),
    ("train.max_steps=true", "train.max_steps must be an integer, got True"),
    ("train.save_every=x", "train.save_every must be an integer, got 'x'"),
    ("train.gradient_checkpointing=maybe", "train.gradient_checkpointing must be true or false, got 'maybe'"),
    ("train.precision=fp8", "train.precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ("train.lr=fast", "train.lr must be a number, got 'fast'"),
    ("train.betas=[0.9]", "train.betas must be a list of 2 numbers"),
    ("train.stage.llm.rank=x", "train.stage.llm.rank must be an integer"),
    ("data.conversation_turns=[1, x]", "data.conversation_turns must be [min, max] integers"),
    ("model.hidden_sise=3", r"unknown model keys ['hidden_sise'] for task 'vlm'"),
    ("model.connector.dept=3", r"unknown model.connector keys ['dept'] for task 'vlm'"),
    ("tokenizer.train_bpe.vocab=3", r"unknown tokenizer.train_bpe keys ['vocab']"),
    ("data=5", "data must be a mapping, got 5"),
])
def test_issue_values_are_one_line_config_errors(override, message, tmp_path, capsys):
    assert _train(tmp_path, base_recipe("vlm", "llava", tmp_path / "run"), override) == 2
    assert message in _one_error_line(capsys)


@pytest.mark.parametrize("task, arch", [("lm", None), ("vit_classify", None), ("vlm", "qwen_vl"), ("vlm", "internvl"),
                                        ("vlm", "qwen2_vl"), ("dpo", None), ("moco", None)])
def test_unknown_model_keys_are_rejected_for_every_task(task, arch, tmp_path, capsys):
    """A misspelt model key is an error before anything is built (qwen_vl and internvl once read theirs
    with .get and ignored the rest; lm's and vit_classify's were never looked at)."""
    assert _train(tmp_path, base_recipe(task, arch, tmp_path / "run"), "model.num_querys=4") == 2
    assert "unknown model keys ['num_querys']" in _one_error_line(capsys)


def test_right_types_are_accepted_and_numbers_normalised(tmp_path):
    """Floats take ints and the strings YAML 1.1 leaves 1e-3 as (made floats); optional keys take null."""
    recipe = base_recipe("dpo", None, tmp_path / "run")
    recipe["train"].update(lr="1e-3", clip_grad_norm=None, weight_decay=0, betas=[0.9, 1], precision="bf16")
    recipe["method"] = {"beta": "2e-1", "loss_type": "ipo"}
    recipe["data"].update(max_length=None, qa_weights={"count": 1, "colour": 0.5})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path, ["train.max_steps=3"])
    assert loaded["train"]["lr"] == 1e-3 and isinstance(loaded["train"]["lr"], float)
    assert loaded["method"]["beta"] == 0.2 and isinstance(loaded["method"]["beta"], float)
    assert loaded["train"]["max_steps"] == 3 and loaded["train"]["betas"] == [0.9, 1]
    with pytest.raises(ConfigError, match="train.max_steps must be an integer, got 3.0"):
        load_recipe(path, ["train.max_steps=3.0"])


def test_kinds_come_from_the_annotations_of_the_config_classes():
    """train: and method: follow TrainConfig / GRPOConfig etc., so a new field is typed the day it is added."""
    from ocellus.train.grpo import GRPOConfig
    from ocellus.train.trainer import TrainConfig
    assert set(schema.TRAIN) == {f for f in TrainConfig.__dataclass_fields__} | {"batch_size"}
    assert set(schema.METHOD["grpo"]) >= set(GRPOConfig.__dataclass_fields__)
    assert schema.TRAIN["clip_grad_norm"].accepts(None) and not schema.TRAIN["max_steps"].accepts(None)
    assert schema.METHOD["grpo"]["epsilon_high"].name == "a number or null"
    with pytest.raises(TypeError, match="no recipe kind"):
        schema.kind_of(set[int])


@pytest.mark.parametrize("recipe, override, message", [
    ("generation/ddpm_digits.yaml", "train.max_steps=five", "train.max_steps must be an integer, got 'five'"),
    ("generation/vqgan_digits.yaml", "train.disc_start=2.5", "train.disc_start must be an integer, got 2.5"),
    ("generation/ddpm_digits.yaml", "train.lrr=1", "unknown train keys ['lrr']"),
    ("unified/emu3_shapes.yaml", "train.save_every=x", "train.save_every must be an integer, got 'x'"),
    ("unified/janus_shapes.yaml", "train.stages=5", "train.stages must be a list of stage mappings, got 5"),
    ("unified/seed_shapes.yaml", "train.vit.max_steps=2.5", "train.vit.max_steps must be an integer, got 2.5"),
    ("unified/seed_shapes.yaml", "train.tokenizer.precision=fp8", "train.tokenizer.precision must be one of fp32"),
])
def test_runners_with_their_own_schema_type_their_train_section(recipe, override, message, tmp_path, monkeypatch,
                                                                 capsys):
    """image_generation, unified and seed_tokenizer recipes (cli.OWN_RUNNERS): the same train kinds. What each
    runner does after loading its recipe is refused here, so a recipe that got through never trains."""
    def refuse(*args, **kwargs):
        raise ReachedTraining(recipe)
    for module, first_step in ((generative, "image_data"), (unified, "run_unified"), (seed_tokenizer_run, "run_seed")):
        monkeypatch.setattr(module, first_step, refuse)
    path = Path(__file__).resolve().parents[2] / "recipes" / recipe
    assert main(["train", str(path), override, f"train.out_dir={tmp_path}"]) == 2
    assert message in _one_error_line(capsys)
