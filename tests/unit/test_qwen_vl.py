"""Qwen-VL's family contract: ViT -> position-aware resampler -> decoder composed from a recipe's parts;
"Picture n: <img>...</img>" written the same by training data and the processor (multi-image prompts
numbered); <ref>/<box> are single tokens; save/load round-trips exactly under our own architecture name;
the grounding recipe trains (loss falls) and `ocellus eval --task shapes-grounding` scores its export
with acc@0.5 and mean IoU."""
import json
from pathlib import Path

import pytest
import torch

import ocellus
from ocellus.data.encode import encode_messages
from ocellus.data.shapes import ShapesConfig, sample_at
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.models.families.qwen_vl import modeling as qwen_vl, processor as qwen_vl_processor
from ocellus.train.recipe_data import image_config
from ocellus.train.stages import parts_of

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "qwen_vl_tiny_shapes" / "train.yaml"


def _compose(parts: Path, **spec):
    tok = Tokenizer.from_dir(parts / "text" / "model")
    spec = {"vision_from": str(parts / "vit" / "model"), "llm_from": str(parts / "text" / "model"),
            "resampler": {"num_queries": 9, "num_heads": 4}, **spec}
    return qwen_vl.compose(spec, tok), tok


def test_compose_parts_and_picture_markup(tiny_vlm_parts):
    model, tok = _compose(tiny_vlm_parts)
    parts = parts_of(model)
    assert set(parts) == {"vision", "connector", "llm"} and parts["connector"] is model.multi_modal_projector
    proc = qwen_vl_processor.training_processor(model, tok, image_config(48))
    cfg = ShapesConfig(seed=2, image_size=48)
    a, b = sample_at(cfg, 0, "grounding"), sample_at(cfg, 1, "qa")
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                        {"type": "text", "text": "Which has more shapes?"}]},
           {"role": "assistant", "content": [{"type": "text", "text": "the first"}]}]
    enc = encode_messages(two, tok, "chatml", images_tokens=[9, 9], image_token=proc.image_token,
                          image_wrap=proc.image_wrap)
    trained = [t for t, label in zip(enc.input_ids, enc.labels) if label != -100]
    assert trained == tok.encode("the first<|im_end|>", add_special_tokens=False)   # the markup is never trained
    batch = proc(messages=[two[0]], images=a["images"] + b["images"])
    assert batch["input_ids"][0].tolist() == enc.input_ids[:batch["input_ids"].shape[1]]
    text = tok.decode(batch["input_ids"][0].tolist())
    assert "Picture 1: <img>" + "<image>" * 9 + "</img>\nPicture 2: <img>" + "<image>" * 9 + "</img>\n" in text
    assert batch["pixel_values"].shape == (2, 3, 48, 48)
    for special in ("<ref>", "</ref>", "<box>", "</box>"):   # grounding markup: one token each
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    with torch.no_grad():
        assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
    with pytest.raises(ConfigError, match="num_queries must be a square"):
        _compose(tiny_vlm_parts, resampler={"num_queries": 10, "num_heads": 4})


def test_save_load_round_trip_is_exact(tiny_vlm_parts, tmp_path):
    model, tok = _compose(tiny_vlm_parts, feature_layer=-2)
    ocellus.save(model, tmp_path, tokenizer=tok)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"height": 48, "width": 48}, "do_center_crop": False,
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))   # CLIP's class crops to 224 unless told not to
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["OcellusQwenVLForConditionalGeneration"]
    assert cfg["model_type"] == "ocellus_qwen_vl" and cfg["resampler"] == {"num_queries": 9, "num_heads": 4}
    again = ocellus.load(tmp_path)
    sd, sd2 = model.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    proc = ocellus.load_processor(tmp_path)
    assert proc.image_wrap == qwen_vl_processor.IMAGE_WRAP and proc.image_token_id == again.image_token_id
    batch = proc(messages=sample_at(ShapesConfig(seed=2, image_size=48), 0, "grounding")["messages"][:1],
                 images=sample_at(ShapesConfig(seed=2, image_size=48), 0, "grounding")["images"])
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    ids = again.generate(**batch, max_new_tokens=3)
    assert torch.equal(ids, model.generate(**batch, max_new_tokens=3))


def test_pretrain_recipe_trains_only_the_adapter(tiny_vlm_parts, tmp_path):
    """recipes/qwen_vl_tiny_shapes/pretrain.yaml (the chain's caption stage): the loss falls while the decoder comes
    out as it went in (frozen: only the adapter learned)."""
    from _vlm_recipes import train_tiny_vlm_recipe
    out = tmp_path / "run"
    losses = train_tiny_vlm_recipe(RECIPE.with_name("pretrain.yaml"), tiny_vlm_parts, out)
    assert losses[-1] < losses[0]
    trained, start = ocellus.load(out / "model"), ocellus.load(tiny_vlm_parts / "text" / "model")
    theirs = start.state_dict()
    assert all(torch.equal(t, theirs[k]) for k, t in trained.language_model.state_dict().items())


def test_grounding_recipe_trains_and_evaluates(tiny_vlm_parts, tmp_path):
    from ocellus.eval.harness import evaluate
    from _vlm_recipes import train_tiny_vlm_recipe
    out = tmp_path / "run"
    losses = train_tiny_vlm_recipe(RECIPE, tiny_vlm_parts, out)
    assert losses[-1] < losses[0]
    lines = []
    result = evaluate(out / "model", "shapes-grounding", n=4, batch_size=4, printer=lines.append)
    assert 0.0 <= result["table"]["all"][1] <= 1.0 and 0.0 <= result["mean_iou"] <= 1.0
    assert any(line.startswith("mean IoU") for line in lines)


def test_resampler_pos_scale_travels_through_the_checkpoint(tiny_vlm_parts, tmp_path):
    model, tok = _compose(tiny_vlm_parts, resampler={"num_queries": 9, "num_heads": 4, "pos_scale": 6.0})
    assert model.multi_modal_projector.pos_scale == 6.0
    ocellus.save(model, tmp_path, tokenizer=tok)
    assert json.loads((tmp_path / "config.json").read_text())["resampler"]["pos_scale"] == 6.0
    again = ocellus.load(tmp_path)
    assert again.multi_modal_projector.pos_scale == 6.0
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again.image_features(x), model.image_features(x), atol=0, rtol=0)


def test_the_top_level_tie_flag_decides():
    """config.json's top-level tie_word_embeddings decides (as transformers' composite configs), whatever
    text_config says; without it, text_config's."""
    vision = {"model_type": "clip_vision_model", "image_size": 16, "patch_size": 4, "hidden_size": 16,
              "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "tie_word_embeddings": True}
    cfg = {"vision_config": vision, "text_config": text, "image_token_id": 5, "resampler": {"num_queries": 4,
                                                                                           "num_heads": 2}}

    def tied(model):
        return model.language_model.lm_head.weight is model.language_model.embed_tokens.weight
    assert not tied(qwen_vl.build_qwen_vl({**cfg, "tie_word_embeddings": False}))
    assert tied(qwen_vl.build_qwen_vl(cfg))
    assert tied(qwen_vl.build_qwen_vl({**cfg, "tie_word_embeddings": True,
                                       "text_config": {**text, "tie_word_embeddings": False}}))
