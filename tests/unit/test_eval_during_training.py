"""Held-out evaluation during training (train.eval_every): the Trainer calls the runner's evaluate hook every
N steps and at the last, on the model as it is then, in eval mode, without changing the run; a vlm recipe's
hook scores the same samples with the same predictions as `ocellus eval` on the export."""
import json

import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.train.loader import BatchLoader
from ocellus.train.trainer import TrainConfig, Trainer

from test_trainer_steps import Regression, collate, rows

RECIPE = "recipes/llava_tiny_shapes/align.yaml"


def _fit(tmp_path, name, eval_every, evaluate):
    cfg = TrainConfig(max_steps=7, lr=1e-2, log_every=1, eval_every=eval_every, out_dir=str(tmp_path / name),
                      progress=False)
    model = Regression()
    trainer = Trainer(model, BatchLoader(rows(), 4, collate, seed=0), cfg, evaluate=evaluate)
    trainer.fit()
    lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return model, lines


def test_hook_runs_every_n_steps_and_at_the_end_in_eval_mode_without_changing_the_run(tmp_path):
    seen = []

    def evaluate(model):
        assert not model.training and not torch.is_grad_enabled()
        seen.append(model.proj.weight.detach().clone())
        return {"all": float(len(seen))}

    model, lines = _fit(tmp_path, "with", 3, evaluate)
    evals = [x for x in lines if "eval" in x]
    assert [x["step"] for x in evals] == [3, 6, 7]                   # every 3 steps, and the last
    assert [x["eval"]["all"] for x in evals] == [1.0, 2.0, 3.0]
    assert all(x["train_s"] > 0 for x in evals) and evals[0]["train_s"] <= evals[-1]["train_s"]
    assert model.training                                            # back in train mode afterwards
    assert torch.equal(seen[-1], model.proj.weight.detach())         # the last eval saw the final weights
    plain, plain_lines = _fit(tmp_path, "without", 0, None)
    assert [x["loss"] for x in lines if "loss" in x] == [x["loss"] for x in plain_lines]
    assert torch.equal(plain.proj.weight, model.proj.weight)          # evaluating changed nothing


def test_vlm_recipe_logs_the_accuracy_ocellus_eval_gives_its_export(tiny_vlm_parts, tmp_path, monkeypatch):
    import ocellus
    import ocellus.eval.harness as harness
    import ocellus.train.run as run
    from ocellus.data.tokenizer import Tokenizer
    from ocellus.train.tasks import load_recipe, run_recipe
    parts, out = tiny_vlm_parts, tmp_path / "run"
    recipe = load_recipe(RECIPE, [
        "train.progress=false", "train.log_every=2", "train.warmup_steps=2", f"train.out_dir={out}",
        "train.max_steps=4", "data.n=32", "train.batch_size=8", "train.eval_every=2", "eval={n: 12}",
        f"model.vision_from={parts}/vit/model", f"model.llm_from={parts}/text/model",
        f"tokenizer.from={parts}/text/model"])
    run_recipe(recipe)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval" in x]
    assert [x["step"] for x in evals] == [2, 4]
    final = harness.evaluate(out / "model", "shapes-vqa", n=12, printer=lambda *_: None)
    assert evals[-1]["eval"] == {k: round(acc, 4) for k, (_, acc) in final["table"].items()}
    # The questions and images the hook asks are exactly the ones `ocellus eval` asks (the eval seed's).
    asked = []

    def recording_predict(model, processor, samples, shots, max_new, *args, **kwargs):
        asked.append([(json.dumps(s["messages"]), s["answer"], s["images"][0].tobytes()) for s in samples])
        return ["yes"] * len(samples)
    monkeypatch.setattr(run, "predict", recording_predict)
    monkeypatch.setattr(harness, "predict", recording_predict)
    model = ocellus.load(out / "model")
    hook = run._evaluator(recipe, model, Tokenizer.from_dir(out / "model"), run.train_config(recipe))
    assert hook(model) == {k: round(acc, 4) for k, (_, acc) in harness.evaluate(
        out / "model", "shapes-vqa", n=12, model=model, printer=lambda *_: None)["table"].items()}
    assert len(asked) == 2 and asked[0] == asked[1]


def test_eval_every_is_refused_where_there_is_nothing_to_score(tmp_path):
    from ocellus.train.tasks import load_recipe, run_recipe
    with pytest.raises(ConfigError, match="eval_every"):
        run_recipe(load_recipe("recipes/llava_tiny_shapes/vit_pretrain.yaml", [
            "train.progress=false", f"train.out_dir={tmp_path}", "train.max_steps=2", "train.eval_every=1",
            "data.n=16", "model.config.num_hidden_layers=1"]))
    assert not (tmp_path / "metrics.jsonl").exists()            # refused before step 1
