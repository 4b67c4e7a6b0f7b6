"""The BLIP-2 / MiniGPT-4 recipes end to end at toy scale: stage 1 (Q-Former with ITC + ITG + ITM)
-> BLIP-2 stage 2 (Q-Former + projection train, ViT and LM frozen) and MiniGPT-4 stages 1-2 (only the
linear layer trains); every loss falls, exports reopen with ocellus.load, the processor expands each
image into num_query_tokens placeholders (inside <Img>...</Img> for MiniGPT-4), generate runs on what
it returns, and the minigpt4 template renders MiniGPT-4's prompt."""
import json
from pathlib import Path

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError
from ocellus.models.families.blip2 import modeling as blip2, processor as blip2_processor
from ocellus.data.tokenizer import Tokenizer
from ocellus.train.qformer_objectives import caption_dataset, compose_stage1
from ocellus.train.recipe_data import image_config, shapes_config
from ocellus.train.tasks import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[2] / "recipes"
SMALL = ["train.progress=false", "train.log_every=2", "train.warmup_steps=2", "train.batch_size=8", "data.n=96"]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stage1(tiny_vlm_parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("blip2") / "stage1"
    run_recipe(load_recipe(ROOT / "blip2_tiny_shapes" / "stage1.yaml", SMALL + [
        f"train.out_dir={out}", "train.max_steps=8", f"model.vision_from={tiny_vlm_parts}/vit/model",
        f"tokenizer.from={tiny_vlm_parts}/text/model", "model.qformer.hidden_size=32",
        "model.qformer.intermediate_size=64", "model.qformer.num_query_tokens=4"]))
    return out


def test_stage1_captions_their_ids_and_batch(tiny_vlm_parts):
    """[CLS] caption eos, [CLS] and [DEC] two ids past the tokenizer's (never a real token), padding masked."""
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    model = compose_stage1({"vision_from": str(tiny_vlm_parts / "vit" / "model"),
                            "qformer": {"num_query_tokens": 4, "hidden_size": 32, "num_hidden_layers": 1,
                                        "num_attention_heads": 4, "intermediate_size": 64}}, tok)
    assert (model.cls_token_id, model.dec_token_id) == (len(tok), len(tok) + 1)
    data = {"source": "shapes", "kind": "caption", "image_size": 48, "seed": 3}
    dataset, collate = caption_dataset(data, 6, tok, model, shapes_config(data), image_config(48))
    rows = [dataset[i] for i in range(6)]
    for _, ids in rows:
        assert ids[0] == model.cls_token_id and ids[-1] == tok.eos_token_id and model.dec_token_id not in ids
    batch = collate(rows)
    lengths = [len(ids) for _, ids in rows]
    assert len(set(lengths)) > 1                         # ragged captions: some rows are padded
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"].shape == (6, max(lengths)) and batch["pixel_values"].shape[0] == 6


def _parts(parts: Path, stage1: Path) -> list[str]:
    return [f"model.vision_from={parts}/vit/model", f"model.llm_from={parts}/text/model",
            f"tokenizer.from={parts}/text/model", f"model.qformer_from={stage1}/model"]


def test_stage1_learns_and_exports(stage1):
    losses = _losses(stage1)
    assert losses[-1] < losses[0], losses
    model = ocellus.load(stage1 / "model")
    assert type(model).__name__ == "QFormerPretraining" and model.qformer.config.num_query_tokens == 4


def test_blip2_stage2_trains_qformer_and_projection_only(tiny_vlm_parts, stage1, tmp_path):
    out = tmp_path / "stage2"
    run_recipe(load_recipe(ROOT / "blip2_tiny_shapes" / "stage2.yaml", SMALL + [
        f"train.out_dir={out}", "train.max_steps=8", *_parts(tiny_vlm_parts, stage1)]))
    losses = _losses(out)
    assert losses[-1] < losses[0], losses
    model = ocellus.load(out / "model")
    first = ocellus.load(stage1 / "model")
    llm = ocellus.load(tiny_vlm_parts / "text" / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.language_model.state_dict().values(), llm.state_dict().values()))
    assert not torch.equal(model.qformer.query_tokens, first.qformer.query_tokens)   # the Q-Former trained
    # the exported processor expands each image into 4 query placeholders; generate runs on its output
    proc = ocellus.load_processor(out / "model")
    from ocellus.data.shapes import ShapesConfig, sample_at
    s = sample_at(ShapesConfig(seed=1, image_size=48), 0, "caption")
    batch = proc(messages=s["messages"][:1], images=s["images"], add_generation_prompt=True)
    assert int((batch["input_ids"] == model.image_token_id).sum()) == 4
    ids = model.generate(**batch, max_new_tokens=5)
    assert ids.shape == (1, batch["input_ids"].shape[1] + 5)


def test_minigpt4_stages_train_only_the_linear_layer(tiny_vlm_parts, stage1, tmp_path):
    s1, s2 = tmp_path / "m1", tmp_path / "m2"
    run_recipe(load_recipe(ROOT / "minigpt4_tiny_shapes" / "stage1.yaml", SMALL + [
        f"train.out_dir={s1}", "train.max_steps=8", *_parts(tiny_vlm_parts, stage1)]))
    run_recipe(load_recipe(ROOT / "minigpt4_tiny_shapes" / "stage2.yaml", SMALL + [
        f"train.out_dir={s2}", "train.max_steps=8", f"model.from={s1}/model"]))
    for out in (s1, s2):
        losses = _losses(out)
        assert losses[-1] < losses[0], (out.name, losses)
    model, first = ocellus.load(s2 / "model"), ocellus.load(stage1 / "model")
    assert model.qformer_part == "vision" and model.image_wrap == ("<Img>", "</Img>")
    assert torch.equal(model.qformer.query_tokens, first.qformer.query_tokens)          # frozen Q-Former
    assert torch.equal(model.qformer.layers[0].attention.query.weight, first.qformer.layers[0].attention.query.weight)
    from ocellus.train.stages import apply_stage
    report = apply_stage(model, {"vision": "frozen", "connector": "full", "llm": "frozen"})
    assert report.counts["connector"][0] == model.language_projection.weight.numel() + model.language_projection.bias.numel()
    assert report.counts["vision"][0] == 0 and report.counts["vision"][1] > sum(
        p.numel() for p in model.qformer.parameters())                                 # Q-Former counted as vision
    proc = ocellus.load_processor(s2 / "model")
    assert proc.image_wrap == ("<Img>", "</Img>")
    assert proc.stop_strings == ("###",)            # the export's processor ends replies at MiniGPT-4's separator


def test_processor_and_compose_errors(tiny_vlm_parts, stage1):
    from ocellus.data.tokenizer import Tokenizer
    from PIL import Image
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    spec = {"vision_from": str(tiny_vlm_parts / "vit" / "model"), "llm_from": str(tiny_vlm_parts / "text" / "model")}
    model = blip2.compose({**spec, "qformer": {"num_query_tokens": 3, "hidden_size": 32, "num_hidden_layers": 1,
                                               "num_attention_heads": 2, "intermediate_size": 64}}, tok)
    assert set(model.parts()) == {"vision", "connector", "llm"}
    proc = blip2_processor.training_processor(model, tok, image_config(48))
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}]
    batch = proc(messages=conv, images=[Image.new("RGB", (40, 30), "red")], add_generation_prompt=True)
    assert batch["pixel_values"].shape == (1, 3, 48, 48)
    assert int((batch["input_ids"] == model.image_token_id).sum()) == 3
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
    with pytest.raises(ConfigError, match="exactly one of qformer_from"):
        blip2.compose(spec, tok)
    with pytest.raises(ConfigError, match="MiniGPT-4 keeps"):
        blip2.compose({**spec, "variant": "minigpt4", "qformer": {"num_query_tokens": 2}}, tok)
    with pytest.raises(ConfigError, match="unknown keys \\['connector'\\]"):
        blip2.compose({**spec, "qformer_from": str(stage1 / "model"), "connector": {}}, tok)


def test_minigpt4_template_renders_minigpt4_prompt():
    from ocellus.data.templates import MINIGPT4_SYSTEM, get_template, render
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe this image in detail."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]}]
    segments = get_template("minigpt4").segments(conv, image_placeholder="<ImageHere>")
    assert render(segments) == (MINIGPT4_SYSTEM + "###Human: <ImageHere> Describe this image in detail.###"
                                "Assistant: A red circle.###")
    assert "".join(s.text for s in segments if s.trainable) == " A red circle.###"
    prompt = render(get_template("minigpt4").segments(conv[:1], add_generation_prompt=True,
                                                      image_placeholder="<ImageHere>"))
    assert prompt.endswith("###Human: <ImageHere> Describe this image in detail.###Assistant:")


def test_minigpt4_processor_prompts_as_training_encodes(tiny_vlm_parts):
    """Inference (the processor's chat template) and training (encode_messages with template minigpt4)
    give the same ids for the prompt: <Img> + query placeholders + </Img> inside MiniGPT-4's format."""
    from PIL import Image
    from ocellus.data.encode import encode_messages
    from ocellus.data.tokenizer import Tokenizer
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    proc = blip2_processor._processor(tok, image_config(48), 3, "vision", ("<Img>", "</Img>"))
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe this image."}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}
    prompt = proc(messages=[user], images=[Image.new("RGB", (48, 48), "red")])["input_ids"][0].tolist()
    enc = encode_messages([user, answer], tok, "minigpt4", images_tokens=[3], image_wrap=("<Img>", "</Img>"))
    assert enc.input_ids[:len(prompt)] == prompt
    text = tok.decode(prompt)
    assert "###Human: <Img>" in text and "</Img> Describe this image.###Assistant:" in text
    assert prompt.count(proc.image_token_id) == 3


def test_minigpt4_reply_ends_at_its_separator(tiny_vlm_parts):
    """MiniGPT-4 trains each answer as " {a}###" (no eos): generation stops at "###" and the reply is cut there,
    as MiniGPT-4's own chat does; BLIP-2 (eos-terminated) keeps the whole text."""
    from PIL import Image
    from ocellus.data.tokenizer import Tokenizer
    from ocellus.eval import harness
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    minigpt4 = blip2_processor._processor(tok, image_config(48), 3, "vision", ("<Img>", "</Img>"))
    plain = blip2_processor._processor(tok, image_config(48), 3, "connector")
    ids = tok.encode(" red###Human: and", add_special_tokens=False)
    assert harness._answer(minigpt4, ids, keep_special=False) == "red"
    assert harness._answer(minigpt4, ids, keep_special=True) == "red"
    assert plain.stop_strings == () and harness._answer(plain, ids, keep_special=False) == "red###Human: and"

    class Recorder(torch.nn.Module):   # generate's kwargs as predict passes them, the reply above appended
        def generate(self, input_ids, **kw):
            self.kw = kw
            return torch.cat([input_ids, torch.tensor([ids] * len(input_ids))], 1)
    model = Recorder()
    sample = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
              "images": [Image.new("RGB", (48, 48), "red")]}
    assert harness.predict(model, minigpt4, [sample], [], 6) == ["red"]
    assert model.kw["stop_strings"] == ("###",) and model.kw["tokenizer"] is tok
    harness.predict(model, plain, [sample], [], 6)
    assert "stop_strings" not in model.kw
