"""InternVL's family contract: a recipe composes CLIP ViT + pixel-shuffle MLP + decoder; its parts
freeze by name; training data and the processor write the same ids (`<img>` ... `</img>` around the
tile tokens); the Ocellus-only layout saves and reloads exactly; the recipe trains (loss falls) and its
export answers through `ocellus.load_processor` + `generate`."""
import json
from pathlib import Path

import pytest
import torch

import ocellus
from ocellus.data.encode import encode_messages
from ocellus.data.shapes import ShapesConfig, render, make_scene, sample_at
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError, InputError
from ocellus.models.families.internvl import modeling as internvl, processor as internvl_processor
from ocellus.train.recipe_data import image_config
from ocellus.train.stages import parts_of

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "internvl_tiny_shapes" / "train.yaml"


def _compose(parts: Path, **spec):
    tok = Tokenizer.from_dir(parts / "text" / "model")
    spec = {"vision_from": str(parts / "vit" / "model"), "llm_from": str(parts / "text" / "model"), **spec}
    return internvl.compose(spec, tok), tok


def test_compose_parts_and_processor_agree_with_training_ids(tiny_vlm_parts):
    model, tok = _compose(tiny_vlm_parts, max_tiles=4)
    assert set(parts_of(model)) == {"vision", "connector", "llm"}
    assert parts_of(model)["connector"] is model.multi_modal_projector
    proc = internvl_processor.training_processor(model, tok, image_config(96))
    sample = sample_at(ShapesConfig(seed=1, image_size=96), 0, "qa")
    images, counts = proc.image_inputs(sample["images"])
    assert images["pixel_values"].shape == (5, 3, 48, 48)      # 96 px square -> 2x2 tiles + thumbnail
    assert counts == [5 * 16]                                   # 48/6 = 8x8 patches -> 4x4 tokens per tile
    enc = encode_messages(sample["messages"], tok, "chatml", images_tokens=counts, image_token=proc.image_token,
                          image_wrap=proc.image_wrap)
    prompt = [sample["messages"][0]]
    batch = proc(messages=prompt, images=sample["images"])
    assert batch["input_ids"][0].tolist() == enc.input_ids[:batch["input_ids"].shape[1]]  # the same prompt ids
    text = tok.decode(batch["input_ids"][0].tolist())
    assert "<img>" + "<image>" * 80 + "</img>" in text
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


def test_compose_errors_name_the_problem(tiny_vlm_parts):
    with pytest.raises(ConfigError, match="downsample_ratio must be 1/r"):
        _compose(tiny_vlm_parts, downsample_ratio=0.3)
    with pytest.raises(ConfigError, match="vision_from"):
        internvl.compose({"llm_from": "x"}, None)
    model, tok = _compose(tiny_vlm_parts, max_tiles=4)
    proc = internvl_processor.training_processor(model, tok, image_config(96))
    image = sample_at(ShapesConfig(seed=1, image_size=96), 0, "qa")["images"]
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                 images=image)
    with pytest.raises(InputError, match="sample 0: 80 image placeholder tokens"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:4])   # a tile lost on the way


def test_ocellus_layout_saves_and_reloads_exactly(tiny_vlm_parts, tmp_path):
    model, tok = _compose(tiny_vlm_parts, min_tiles=2, max_tiles=3, feature_layer=-2)
    with torch.no_grad():
        for p in model.multi_modal_projector.parameters():
            p.add_(torch.randn_like(p))
    ocellus.save(model, tmp_path, tokenizer=tok)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["OcellusInternVLForConditionalGeneration"]
    assert cfg["model_type"] == "ocellus_internvl" and (cfg["min_dynamic_patch"], cfg["max_dynamic_patch"]) == (2, 3)
    again = ocellus.load(tmp_path)
    assert again.feature_layer == -2
    sd, sd2 = model.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    internvl_processor.export_processor(again, tok, image_config(96), tmp_path)
    proc = ocellus.load_processor(tmp_path)
    assert proc.image_token == "<image>" and proc.image_wrap == ("<img>", "</img>")
    icfg = proc.image_config
    assert (icfg.min_patches, icfg.max_patches, icfg.size_hw) == (2, 3, (48, 48))   # the recipe's tiling, exported


def test_recipe_trains_and_export_generates(tiny_vlm_parts, tmp_path):
    from _vlm_recipes import train_tiny_vlm_recipe
    out = tmp_path / "run"
    losses = train_tiny_vlm_recipe(RECIPE, tiny_vlm_parts, out)
    assert losses[-1] < losses[0]
    model, proc = ocellus.load(out / "model"), ocellus.load_processor(out / "model")
    image = render(make_scene(__import__("numpy").random.default_rng(0), ShapesConfig(image_size=96)))
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
                 images=[image])
    T = batch["input_ids"].shape[1]
    ids = model.generate(**batch, max_new_tokens=4)
    assert T < ids.shape[1] <= T + 4 and torch.equal(ids[:, :T], batch["input_ids"])


def test_downsample_ratio_sets_the_pixel_shuffle_fold():
    """downsample_ratio 1/r folds r x r patches into one token: 0.25 on a 4 x 4 grid is 1 token a tile, 0.5 is 4;
    a ratio that is not 1/r is refused."""
    vision = {"model_type": "internvl_vision", "image_size": 28, "patch_size": 7, "hidden_size": 16,
              "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = {"vision_config": vision, "text_config": text, "image_token_id": 5}
    assert internvl.tokens_per_tile({**cfg, "downsample_ratio": 0.5}) == 4
    assert internvl.tokens_per_tile({**cfg, "downsample_ratio": 0.25}) == 1
    model = internvl.build_internvl({**cfg, "downsample_ratio": 0.25})
    assert model.multi_modal_projector.ratio == 4
    assert model.image_features(torch.randn(2, 3, 28, 28)).shape == (2, 1, 32)
    with pytest.raises(ConfigError, match="must be 1/r"):
        internvl.build_internvl({**cfg, "downsample_ratio": 0.3})
