"""The encode/train benchmarks run end to end in quick mode (figures are not asserted: timings
belong to benchmarks, not tests)."""
import pytest

from ocellus.bench_vlm import bench_encode, bench_train, bench_train_recipe
from ocellus.errors import ConfigError


def test_encode_benchmark_rows():
    row = bench_encode(batch=2, image_size=32, patch=8, hidden=64, layers=2, repeats=1, printer=lambda *_: None)
    assert all(v > 0 for v in row.values())


def test_train_benchmark_rows():
    row = bench_train(batch=2, steps=1, printer=lambda *_: None)
    assert row["samples_per_s_ours"] > 0 and row["samples_per_s_ref"] > 0 and row["ratio"] > 0


def test_train_benchmark_in_bf16_runs_both_sides_under_autocast():
    """--precision bf16: each side's logits come out in bf16 (in fp32 without it), and the two sides' first losses
    (same weights, same batch) agree to bf16 accuracy (the same autocast on both). (The loss itself can move
    off its fp32 value by as little as 4e-6: a random model's near-uniform logits average the rounding out.)"""
    fp32 = bench_train(batch=2, steps=1, repeats=1, printer=lambda *_: None)
    bf16 = bench_train(batch=2, steps=1, repeats=1, printer=lambda *_: None, precision="bf16")
    assert bf16["precision"] == "bf16" and bf16["ratio"] > 0
    assert abs(fp32["first_loss_ours"] - fp32["first_loss_ref"]) < 1e-4
    for side in ("ours", "ref"):
        assert (fp32[f"logits_dtype_{side}"], bf16[f"logits_dtype_{side}"]) == ("float32", "bfloat16"), side
    assert abs(bf16["first_loss_ours"] - bf16["first_loss_ref"]) < 2e-2 * fp32["first_loss_ref"]
    with pytest.raises(ConfigError, match="fp16"):
        bench_train(batch=2, steps=1, repeats=1, printer=lambda *_: None, precision="fp16")


def test_train_benchmark_on_a_recipe_batch():
    row = bench_train_recipe("recipes/llava_tiny_shapes/sft.yaml", batch=2, steps=1, repeats=1, printer=lambda *_: None)
    assert row["samples_per_s_ours"] > 0 and row["samples_per_s_ref"] > 0 and row["ratio"] > 0


@pytest.mark.parametrize("recipe", ["recipes/posttrain/sft.yaml", "recipes/flamingo_tiny_shapes/train.yaml"])
def test_train_benchmark_refuses_stages_it_cannot_mirror(recipe):
    with pytest.raises(ConfigError, match="bench train --recipe"):
        bench_train_recipe(recipe, batch=2, steps=1, repeats=1, printer=lambda *_: None)
