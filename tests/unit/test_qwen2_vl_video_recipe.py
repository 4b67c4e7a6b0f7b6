"""recipes/qwen2_vl_tiny_shapes/video.yaml pointed at the tiny pretrained parts: it trains 2 steps on
moving-shapes clips (scored on shapes-video during training), exports a video model (video_token_id, a
chat template that writes video parts, video_preprocessor_config.json), the export's processor gives the ids
and patches training encoded, and `ocellus eval --task shapes-video` scores it. Bad video setups are errors."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import ocellus
from ocellus.data.shapes_video import VideoShapesConfig, sample_at
from ocellus.errors import ConfigError
from ocellus.eval.harness import evaluate
from ocellus.train.run import build_tokenizer
from ocellus.train.tasks import build_model, load_recipe, run_recipe
from ocellus.train.tasks import vlm

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "qwen2_vl_tiny_shapes" / "video.yaml"


def _recipe(parts: Path, out: Path, extra=(), drop=("init_from",)) -> dict:
    """The shipped recipe without init_from and vision_from (the image run's checkpoint and its ViT are not
    here), on the tiny parts."""
    raw = yaml.safe_load(RECIPE.read_text())
    for key in ("vision_from", *drop):
        del raw["model"][key]
    path = out / "video.yaml"
    path.write_text(yaml.safe_dump(raw))
    text = parts / "text" / "model"
    return load_recipe(path, ["train.progress=false", "train.log_every=1", "train.warmup_steps=1", "train.max_steps=2",
                              "train.batch_size=4", "data.n=8", f"train.out_dir={out}", f"model.llm_from={text}",
                              f"tokenizer.from={text}", "model.config.mrope_section=[2, 1, 1]", "train.eval_every=2",
                              "eval.n=4", *extra])


def test_video_recipe_trains_exports_and_evaluates(tiny_vlm_parts, tmp_path):
    recipe = _recipe(tiny_vlm_parts, tmp_path)
    path = run_recipe(recipe)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert any("all" in r.get("eval", {}) for r in lines)   # the shapes-video score during training

    tok = build_tokenizer(recipe, tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["video_token_id"] == tok.convert_tokens_to_ids("<box>") != config["image_token_id"]
    assert json.loads((path / "video_preprocessor_config.json").read_text())["do_sample_frames"] is False
    proc = ocellus.load_processor(path)
    assert proc.video_token == "<box>"

    # what training encoded = what the exported processor gives the same conversation
    dataset, _ = vlm.build_dataset(recipe, tok, build_model(recipe, tok))
    row, s = dataset[0], sample_at(VideoShapesConfig(seed=recipe["data"]["seed"], image_size=64, frames=4,
                                                     max_distractors=1, question_variants=True), 0)
    asked = proc(messages=[s["messages"][0]], videos=s["videos"])
    prompt = asked["input_ids"][0].tolist()
    assert row["enc"].input_ids[:len(prompt)] == prompt
    answer = tok.decode(row["enc"].input_ids[len(prompt):], skip_special_tokens=True)
    assert answer.strip() == s["answer"]              # "left<|im_end|>\n"
    for key in ("pixel_values_videos", "video_grid_thw"):
        assert torch.equal(row["images"][key], asked[key])
    assert asked["video_grid_thw"].tolist() == [[2, 8, 8]]   # 4 frames of 64 px, patch 8: 2 x 8 x 8 -> 32 tokens
    assert prompt.count(proc.video_token_id) == 32

    result = evaluate(path, "shapes-video", n=4, printer=lambda *a: None)
    assert result["n"] == 4 and 0.0 <= result["table"]["all"][1] <= 1.0
    with pytest.raises(ConfigError, match="shots"):
        evaluate(path, "shapes-video", n=2, shots=1, printer=lambda *a: None)


def test_video_recipe_setups_that_cannot_work_are_refused(tiny_vlm_parts, tmp_path):
    recipe = _recipe(tiny_vlm_parts, tmp_path, ["model.video_token=<image>"])
    tok = build_tokenizer(recipe, tmp_path)
    with pytest.raises(ConfigError, match="is the image token"):    # the video pad must be a token of its own
        build_model(recipe, tok)
    recipe = _recipe(tiny_vlm_parts, tmp_path, drop=("init_from", "video_token"))
    with pytest.raises(ConfigError, match="needs a model with a video token"):
        vlm.build_dataset(recipe, tok, build_model(recipe, tok))
    with pytest.raises(ConfigError, match="data.frames is read with data.source shapes_video"):
        _recipe(tiny_vlm_parts, tmp_path, ["data.source=shapes"])
