"""The embedded default model (ocellus/assets/llava-tiny-shapes, made by scripts/make_default_model.sh):
it loads, it still answers held-out shapes questions (a regression guard below the accuracy measured
when it was made), and its files are a plain transformers LlavaForConditionalGeneration checkpoint
with the same logits."""
import pytest
import torch

import ocellus
from ocellus.data.shapes import ShapesConfig, sample_at
from ocellus.eval.harness import predict
from ocellus.eval.vqa import vqa_exact_match

HELD_OUT_SEED = 31_337   # no recipe (0-4), eval (10_007) or demo (20_240) seed


@pytest.fixture(scope="module")
def default():
    path = ocellus.default_model_dir()
    model = ocellus.load(path).eval()
    return path, model, ocellus.load_processor(path)


def _questions(size: int, n: int) -> list[dict]:
    cfg = ShapesConfig(image_size=size, seed=HELD_OUT_SEED, min_size=max(0.18, 6.5 / size),
                       qa_weights=(("colour", 1.0), ("shape", 1.0), ("existence", 1.0)))
    return [sample_at(cfg, i, "qa") for i in range(n)]


def test_ships_small_and_loads(default):
    path, model, proc = default
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= \
        {p.name for p in path.iterdir()}
    assert sum(p.stat().st_size for p in path.iterdir()) < 16 * 2**20   # a few MB
    assert type(model).__name__ != "DecoderLM" and hasattr(proc, "image_config")  # a VLM and its Processor


def test_answers_held_out_questions(default):
    _, model, proc = default
    samples = _questions(model.vision_tower.config.image_size, 100)
    preds = predict(model, proc, samples, [], max_new_tokens=6, batch_size=50)
    right = sum(vqa_exact_match(p, s["answer"]) for p, s in zip(preds, samples))
    # 99/100 when the shipped model was made (recipes/llava_tiny_shapes, 2026-11-23, session 5); a
    # guard against a broken loader, processor or asset (chance is about 30%); the target
    # (>= 90% per type, n = 500) is shown by `ocellus eval --task shapes-vqa` (docs/BENCHMARKS.md)
    assert right >= 90, f"{right}/100 held-out colour/shape/existence questions answered correctly"


def test_transformers_loads_it_with_equal_logits(default):
    transformers = pytest.importorskip("transformers")
    path, model, proc = default
    ref = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    samples = _questions(model.vision_tower.config.image_size, 3)
    messages = [[m for m in s["messages"] if m["role"] == "user"] for s in samples]
    batch = proc(messages=messages, images=[s["images"] for s in samples])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        ours = model(**inputs).logits
        theirs = ref(**inputs).logits
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)
    assert torch.equal(ours[mask].argmax(-1), theirs[mask].argmax(-1))
