"""CapFilt (ocellus/train/capfilt.py): corrupted captions are wrong in exactly one way, the pair files
round-trip through the BLIP recipe's data reader, and the whole pipeline (pretrain on noisy data ->
fine-tune captioner and filter -> caption -> filter -> write -> pretrain again) runs at toy size and
reports noise rates that agree with its files."""
import json
from pathlib import Path

import numpy as np
import pytest

from ocellus.data.shapes import caption
from ocellus.train.capfilt import corrupt, noise_rate, run_capfilt, same_caption, scenes, write_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_corruption_changes_exactly_one_thing():
    rng = np.random.default_rng(0)
    kinds = {"colour": 0, "shape": 0, "count": 0}
    for scene in scenes({"image_size": 64, "min_objects": 1, "max_objects": 3}, 0, 300):
        bad = corrupt(scene, rng)
        assert not same_caption(caption(bad), caption(scene))
        before = sorted((o.colour, o.shape) for o in scene.objects)
        after = sorted((o.colour, o.shape) for o in bad.objects)
        if len(after) != len(before):
            kinds["count"] += 1
            assert abs(len(after) - len(before)) == 1
        else:
            changed = [(a, b) for a, b in zip(scene.objects, bad.objects) if (a.colour, a.shape) != (b.colour, b.shape)]
            assert len(changed) == 1
            a, b = changed[0]
            kinds["colour" if a.shape == b.shape else "shape"] += 1
            assert (a.colour == b.colour) != (a.shape == b.shape)
        assert len(set(after)) == len(after)                      # (colour, shape) pairs stay distinct
    assert all(v > 50 for v in kinds.values()), kinds


def test_noise_rate_and_caption_matching():
    assert same_caption("A red circle and a blue star.", "a red circle and a blue star")
    assert not same_caption("A red circle.", "A red square.")
    rows = [{"caption": "A red circle.", "truth": "A red circle."},
            {"caption": "A red star.", "truth": "A red circle."}]
    assert noise_rate(rows) == 0.5


def test_pair_files_round_trip_through_the_recipe_reader(tmp_path):
    from ocellus.data.shapes import render
    from ocellus.train.albef_blip_run import pair_source
    sc = scenes({"image_size": 32}, 4, 3)
    rows = [{"id": f"x-{i}", "image": render(s), "image_file": f"x-{i}.png", "caption": caption(s), "truth": caption(s),
             "source": "clean"} for i, s in enumerate(sc)]
    rows[1]["caption"] = "A purple cross."
    path = write_pairs(tmp_path, rows)
    n, pair = pair_source({"source": "llava_json", "path": str(path)}, 10)
    assert n == 3 and [pair(i)[1] for i in range(3)] == [r["caption"] for r in rows]
    assert pair(2)[0].size == (32, 32)
    meta = [json.loads(line) for line in (tmp_path / "meta.jsonl").read_text().splitlines()]
    assert [m["correct"] for m in meta] == [True, same_caption("A purple cross.", rows[1]["truth"]), True]


def test_pipeline_runs_at_toy_size(tmp_path):
    tiny = ["model.vision={image_size: 16, patch_size: 4, hidden_size: 32, intermediate_size: 48, "
            "num_hidden_layers: 1, num_attention_heads: 2}",
            "model.text={hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 2, "
            "max_position_embeddings: 32}",
            "model.align={embed_dim: 16, queue_size: 64, momentum: 0.9, queue_start_step: 2}",
            "tokenizer.train_bpe.corpus_n=200", "train.warmup_steps=1", "train.log_every=1",
            "data.image_size=32"]
    config = {"base": str(RECIPES / "blip_tiny_shapes/pretrain.yaml"), "base_overrides": tiny,
              "out_dir": str(tmp_path / "capfilt"), "clean": {"n": 32, "seed": 2},
              "web": {"n": 64, "seed": 1, "noise": 0.25}, "pretrain": {"max_steps": 6, "batch_size": 16},
              "finetune": {"max_steps": 3, "batch_size": 16}, "caption": {"max_new_tokens": 8, "batch_size": 32},
              "filter": {"threshold": 0.0}, "eval": {"n": 16}}
    printed = []
    result = run_capfilt(config, printer=printed.append)
    out = tmp_path / "capfilt"
    assert 0.1 < result["noise_before"] < 0.45 and result["web_pairs"] == 64   # noise 0.25, not 0.75
    assert result["web_kept"] == 64 and result["synthetic_kept"] <= 64        # threshold 0 keeps every web text
    meta = [json.loads(line) for line in (out / "data_bootstrapped/meta.jsonl").read_text().splitlines()]
    assert len(meta) == result["bootstrapped_pairs"]
    assert sum(not m["correct"] for m in meta) / len(meta) == pytest.approx(result["noise_bootstrapped_dataset"])
    assert {m["source"] for m in meta} >= {"web", "clean"}
    for stage in ("pretrain_noisy", "captioner", "filter", "pretrain_bootstrapped"):
        assert (out / stage / "model" / "config.json").is_file()
    assert set(result["retrieval_bootstrapped"]) >= {"t2i_R@1", "i2t_R@1"}
    assert "dataset noise" in printed[0]


def test_filter_rejects_texts_the_encoder_cannot_take_by_name():
    from ocellus.data.shapes import render
    from ocellus.train.capfilt import itm_filter
    from test_albef import shapes_tokenizer
    from test_blip import tiny_blip
    tok = shapes_tokenizer()
    model = tiny_blip(tok=tok)
    images = [render(s) for s in scenes({"image_size": 32}, 0, 3)]
    scores = itm_filter(model, tok, images, ["A red circle.", "", "A red circle. " * 10], batch_size=2)
    assert 0.0 < scores[0] < 1.0 and scores[1] is None and scores[2] is None
