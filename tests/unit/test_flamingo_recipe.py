"""The Flamingo family contract: compose from pretrained parts, a processor giving ONE <image> token per
image, the recipe training only the resampler + xattn blocks (loss falls), export -> load ->
generate, and few-shot (several images per sample) evaluation through the harness."""
import json
from pathlib import Path

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError
from ocellus.models.families.flamingo import modeling as flamingo, processor as flamingo_processor
from ocellus.train.recipe_data import image_config
from ocellus.train.tasks import load_recipe, run_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "flamingo_tiny_shapes" / "train.yaml"


def _spec(parts: Path, **kw) -> dict:
    return {"architecture": "flamingo", "vision_from": str(parts / "vit" / "model"),
            "llm_from": str(parts / "text" / "model"), "perceiver": {"depth": 1, "num_latents": 4, "heads": 2,
                                                                    "head_dim": 16},
            "cross_attn": {"every_n_layers": 2, "heads": 2, "head_dim": 16}, **kw}


def test_compose_keeps_the_pretrained_parts_and_the_processor_gives_one_token_per_image(tiny_vlm_parts):
    from ocellus.data.tokenizer import Tokenizer
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    model = flamingo.compose(_spec(tiny_vlm_parts), tok)
    decoder = ocellus.load(tiny_vlm_parts / "text" / "model")
    assert model.family_name == "flamingo"
    assert all(torch.equal(a, b) for a, b in zip(model.language_model.state_dict().values(),
                                                 decoder.state_dict().values()))
    assert sorted(int(k) for k in model.gated_cross_attn) == [1]        # 2 layers, every 2nd: before layer 1
    proc = flamingo_processor.training_processor(model, tok, image_config(48))
    from PIL import Image
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "one"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "two"}]}]
    batch = proc(messages=conv, images=images)
    assert batch["pixel_values"].shape == (2, 3, 48, 48)
    assert int((batch["input_ids"] == model.image_token_id).sum()) == 2   # one <image> per image, no expansion
    # the whole model runs on what the processor returns, and its fresh gates keep the decoder's logits
    assert torch.equal(model(**batch).logits, decoder(input_ids=batch["input_ids"]).logits)


def test_compose_with_a_new_resnet_vision_encoder(tiny_vlm_parts):
    from ocellus.data.tokenizer import Tokenizer
    from ocellus.models.vision.resnet import ResNetEncoder
    from ocellus.train.stages import apply_stage
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    spec = {k: v for k, v in _spec(tiny_vlm_parts).items() if k != "vision_from"}
    model = flamingo.compose({**spec, "vision": {"image_size": 48, "stem_width": 8, "widths": [8, 16],
                                                 "depths": [1, 1], "hidden_size": 32, "norm_groups": 4}}, tok)
    assert isinstance(model.vision_tower, ResNetEncoder) and model.perceiver.config.dim == 32
    report = apply_stage(model, {"vision": "full", "connector": "full", "llm": "frozen"})
    assert report.counts["vision"][0] == report.counts["vision"][1] > 0
    proc = flamingo_processor.training_processor(model, tok, image_config(48))
    from PIL import Image
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                 images=[Image.new("RGB", (48, 48), "red")])
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_compose_errors_name_the_problem(tiny_vlm_parts):
    from ocellus.data.tokenizer import Tokenizer
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    with pytest.raises(ConfigError, match="exactly one of vision_from"):
        flamingo.compose({**_spec(tiny_vlm_parts), "vision": {"widths": [8]}}, tok)
    with pytest.raises(ConfigError, match="unknown keys \\['connector'\\]"):
        flamingo.compose({**_spec(tiny_vlm_parts), "connector": {"depth": 2}}, tok)
    with pytest.raises(ConfigError, match="cross_attn_every_n_layers must be an int in 1..2"):
        flamingo.compose(_spec(tiny_vlm_parts, cross_attn={"every_n_layers": 3}), tok)


def test_interleaved_training_sequences_hold_several_images_and_answers(tiny_vlm_parts):
    """data.interleave: k samples as the turns of one conversation, each image one <image> token."""
    from ocellus.data.tokenizer import Tokenizer
    from ocellus.train.tasks import build_dataset
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    model = flamingo.compose(_spec(tiny_vlm_parts), tok)
    data = {"source": "shapes", "kind": "qa", "n": 4, "seed": 5, "image_size": 48, "max_length": 256}
    single, collate = build_dataset({"task": "vlm", "data": data}, tok, model)
    joined, _ = build_dataset({"task": "vlm", "data": {**data, "interleave": 3}}, tok, model)
    batch = collate([joined[1]])
    assert batch["pixel_values"].shape[0] == 3
    assert int((batch["input_ids"] == model.image_token_id).sum()) == 3
    # sample 1 of the interleaved set is samples 3, 4, 5 of the plain one, all three answers trained
    first = [t for t in single[3]["enc"].labels if t != -100]          # sample 3's answer + its end token
    trained = [t for t in batch["labels"][0].tolist() if t != -100]
    assert trained[:len(first)] == first
    assert trained.count(tok.convert_tokens_to_ids("<|im_end|>")) == 3
    with pytest.raises(ConfigError, match="data.interleave must be a positive int"):
        build_dataset({"task": "vlm", "data": {**data, "interleave": 0}}, tok, model)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_vlm_parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("flamingo") / "run"
    run_recipe(load_recipe(RECIPE, [
        "train.progress=false", "train.log_every=2", "train.warmup_steps=2", f"train.out_dir={out}",
        "train.max_steps=12", "data.n=96", "train.batch_size=8", "train.lr=3e-3",
        f"model.vision_from={tiny_vlm_parts}/vit/model", f"model.llm_from={tiny_vlm_parts}/text/model",
        f"tokenizer.from={tiny_vlm_parts}/text/model", "model.perceiver.num_latents=8"]))
    return out


def test_recipe_trains_only_the_connector_and_the_loss_falls(trained, tiny_vlm_parts):
    losses = _losses(trained)
    assert losses[-1] < losses[0], losses
    model = ocellus.load(trained / "model")
    assert isinstance(model, flamingo.Flamingo)
    # frozen parts came out bit-identical; the gates opened
    decoder, vit = ocellus.load(tiny_vlm_parts / "text" / "model"), ocellus.load(tiny_vlm_parts / "vit" / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.language_model.state_dict().values(),
                                                 decoder.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(model.vision_tower.state_dict().values(), vit.state_dict().values()))
    assert any(b.attn_gate.item() != 0 for b in model.gated_cross_attn.values())


def test_export_loads_with_its_processor_and_generates(trained):
    model, proc = ocellus.load(trained / "model"), ocellus.load_processor(trained / "model")
    assert proc.image_token_id == model.image_token_id
    from ocellus.eval.harness import task_samples, _conversation
    samples = task_samples("shapes-vqa", 3, 48)
    convs, images = zip(*(_conversation(s, samples[:2]) for s in samples[2:]))
    batch = proc(messages=list(convs), images=[list(i) for i in images])
    assert batch["pixel_values"].shape[0] == 3                          # 2 shots + the question
    out = model.generate(**batch, max_new_tokens=5)
    T = batch["input_ids"].shape[1]
    assert out.shape[0] == 1 and T < out.shape[1] <= T + 5 and torch.equal(out[:, :T], batch["input_ids"])


@pytest.mark.parametrize("shots", [0, 4, 8])   # Flamingo's 0/4/8-shot evaluation
def test_few_shot_evaluation_runs_with_several_images_per_sample(trained, shots):
    from ocellus.eval.harness import evaluate
    seen = []
    model = ocellus.load(trained / "model")
    hook = model.perceiver.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    result = evaluate(trained / "model", "shapes-vqa", n=4, shots=shots, batch_size=4, model=model,
                      printer=lambda *a: None)
    hook.remove()
    assert result["shots"] == shots and result["n"] == 4
    assert seen == [4 * (shots + 1)]      # every sample's shots and question images, in one prefill
