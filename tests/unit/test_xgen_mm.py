"""xGen-MM / BLIP-3's family contract (models/families/xgen_mm): an image is 1 global view + the tiles of its
canvas, each view sampled by the perceiver on its own to L tokens and projected AFTER the perceiver, so the
processor writes V_i * L placeholders per image with the views in grid order; the strict save / load path
round-trips exactly under our own architecture with Salesforce's tensor names; the shipped recipe trains,
exports and is scored by `ocellus eval`; bad pinpoints, too many images, views that do not match their sizes
are typed errors. (The overfit test is tests/unit/test_vlm_overfit.py's, family "xgen_mm".)"""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ocellus
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError, InputError
from ocellus.models.families.llava_next.processor import export_processor
from ocellus.models.families.xgen_mm import modeling as xgen_mm, processor as xgen_mm_processor
from ocellus.train.recipe_data import image_config
from ocellus.train.stages import parts_of

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "xgen_mm_tiny_shapes" / "train.yaml"
PINPOINTS = [[48, 96], [96, 48], [96, 96]]
L = 3
QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]


def _compose(parts: Path, **spec):
    tok = Tokenizer.from_dir(parts / "text" / "model")
    torch.manual_seed(0)
    spec = {"vision_from": str(parts / "vit" / "model"), "llm_from": str(parts / "text" / "model"),
            "image_grid_pinpoints": PINPOINTS, "perceiver": {"depth": 1, "num_latents": L, "heads": 2, "head_dim": 16,
                                                             "ff_mult": 2}, **spec}
    return xgen_mm.compose(spec, tok).eval(), tok


def _halves(h: int, w: int, top=(220, 40, 40), bottom=(40, 70, 230)) -> Image.Image:
    """An image whose top half is red and bottom half blue: its tiles tell the grid order."""
    img = Image.new("RGB", (w, h), bottom)
    img.paste(Image.new("RGB", (w, h // 2), top), (0, 0))
    return img


def _runs(ids: list[int], token: int) -> list[int]:
    """Lengths of the runs of `token` in ids: one run per image."""
    out, n = [], 0
    for t in ids + [None]:
        if t == token:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def test_processor_writes_views_times_latents_per_image_in_grid_order(tiny_vlm_parts):
    model, tok = _compose(tiny_vlm_parts)
    proc = xgen_mm_processor.training_processor(model, tok, image_config(48))
    # (H, W) -> the canvas the 48 px tiles come from: square and wide pick 1x2, tall 2x1, large 2x2
    grids = {(48, 48): (1, 2), (40, 90): (1, 2), (90, 40): (2, 1), (100, 100): (2, 2)}
    images = [_halves(h, w) for h, w in grids]
    views = [1 + r * c for r, c in grids.values()]                                  # [3, 3, 3, 5]
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " and "}, {"type": "image"},
                                        {"type": "text", "text": "Same?"}]}]          # text apart: one run per image
    batch = proc(messages=[two, two], images=[images[:2], images[2:]])
    assert [_runs(row, model.image_token_id) for row in batch["input_ids"].tolist()] == \
        [[views[0] * L, views[1] * L], [views[2] * L, views[3] * L]]
    assert batch["pixel_values"].shape == (sum(views), 3, 48, 48)                  # real views only, flattened
    assert batch["image_sizes"].tolist() == [list(s) for s in grids]
    # the tall image's views: global, then its top tile (red) and bottom tile (blue), row-major
    tall = batch["pixel_values"][sum(views[:2]):sum(views[:3])]                     # [3, 3, 48, 48]
    red_minus_blue = (tall[:, 0] - tall[:, 2]).mean(dim=(1, 2))
    assert red_minus_blue[1] > 1.0 and red_minus_blue[2] < -1.0 and abs(red_minus_blue[0]) < 0.5
    # the model makes exactly as many tokens per image as the processor wrote: the forward splices them
    _, counts = model.image_tokens(batch["pixel_values"], batch["image_sizes"])
    assert counts == [v * L for v in views]
    with torch.no_grad():
        assert model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_each_view_is_sampled_alone_then_projected(tiny_vlm_parts):
    """image tokens = [projection(perceiver(ViT(view))) for each view], concatenated: the perceiver at the
    tower's width, the Linear after it (xGen-MM's PerceiverResampler(dim_inner=D)); a change to one tile's
    pixels moves that tile's L tokens only."""
    model, tok = _compose(tiny_vlm_parts)
    vit, decoder = (ocellus.load(tiny_vlm_parts / p / "model").state_dict() for p in ("vit", "text"))
    assert all(torch.equal(model.vision_tower.state_dict()[k], v) for k, v in vit.items())       # the parts loaded
    assert all(torch.equal(model.language_model.state_dict()[k], v) for k, v in decoder.items())
    parts = parts_of(model)
    assert set(parts) == {"vision", "connector", "llm"}
    assert {id(p) for p in parts["connector"].parameters()} == {id(p) for p in model.packer.parameters()}
    proc = xgen_mm_processor.training_processor(model, tok, image_config(48))
    batch = proc(messages=QUESTION, images=[_halves(90, 40)])
    views = batch["pixel_values"]                                                   # [3, 3, 48, 48]
    sampler = model.packer
    with torch.no_grad():
        tokens, counts = model.image_tokens(views, batch["image_sizes"])            # [3 * L, D]
        feats = model.vision_tower.features(views, layer=-1, strategy="full")       # [3, P + 1, Dv]
        latents = sampler.perceiver(feats)                                          # [3, L, Dv]
        by_hand = latents @ sampler.projection.weight.T + sampler.projection.bias   # [3, L, D]
        torch.testing.assert_close(tokens, by_hand.flatten(0, 1), atol=1e-5, rtol=1e-5)
        assert latents.shape[-1] == model.vision_tower.config.hidden_size
        assert tokens.shape == (3 * L, model.language_model.config.hidden_size)
        changed = views.clone()
        changed[2] = torch.randn_like(changed[2])                                   # the bottom tile
        again, _ = model.image_tokens(changed, batch["image_sizes"])
    assert torch.equal(again[:2 * L], tokens[:2 * L]) and not torch.allclose(again[2 * L:], tokens[2 * L:])


def test_save_load_round_trip_is_exact_under_salesforce_names(tiny_vlm_parts, tmp_path):
    model, tok = _compose(tiny_vlm_parts, feature_layer=-2, feature_select="default")
    ocellus.save(model, tmp_path, tokenizer=tok)
    export_processor(model, tok, image_config(48), tmp_path)                         # the registry's export piece
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["OcellusXGenMMForConditionalGeneration"] and cfg["model_type"] == "ocellus_xgen_mm"
    assert cfg["image_grid_pinpoints"] == PINPOINTS and cfg["vision_feature_layer"] == -2
    assert cfg["vision_feature_select_strategy"] == "default"                        # CLS dropped, as composed
    assert cfg["vision_tokenizer_config"] == {"depth": 1, "num_latents": L, "heads": 2, "head_dim": 16, "ff_mult": 2,
                                              "layer_norm_eps": 1e-5}
    keys = set(load_file(tmp_path / "model.safetensors"))
    for name in ("vlm.vision_tokenizer.latents", "vlm.vision_tokenizer.layers.0.0.to_kv.weight",
                 "vlm.vision_tokenizer.layers.0.1.0.weight", "vlm.vision_tokenizer.layers.0.1.3.weight",
                 "vlm.vision_tokenizer.norm.bias", "vlm.vision_tokenizer.projection.weight",
                 "vlm.vision_tokenizer.projection.bias",
                 "vlm.vision_encoder.encoder.layers.0.self_attn.out_proj.weight",
                 "vlm.lang_model.model.layers.0.self_attn.q_proj.weight", "vlm.lang_model.model.embed_tokens.weight"):
        assert name in keys, name
    again = ocellus.load(tmp_path).eval()
    assert (again.feature_layer, again.feature_select) == (-2, "default")
    sd, sd2 = model.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    proc = ocellus.load_processor(tmp_path)
    images = [_halves(90, 40), _halves(100, 100)]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]}]
    batch = proc(messages=msgs, images=images)
    expected = xgen_mm_processor.training_processor(model, tok, image_config(48))(messages=msgs, images=images)
    assert all(torch.equal(batch[k], expected[k]) for k in expected)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    assert torch.equal(again.generate(**batch, max_new_tokens=3), model.generate(**batch, max_new_tokens=3))
    ocellus.save(again, tmp_path / "again", tokenizer=tok)
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == cfg


def test_bad_input_is_a_typed_error_naming_it(tiny_vlm_parts, tmp_path):
    with pytest.raises(ConfigError, match=r"pinpoints \[\(50, 96\)\] are not multiples of the tile size 48"):
        _compose(tiny_vlm_parts, image_grid_pinpoints=[[50, 96]])
    with pytest.raises(ConfigError, match="list of \\[height, width\\] pixel pairs"):
        _compose(tiny_vlm_parts, image_grid_pinpoints=[[48]])
    with pytest.raises(ConfigError, match=r"vision_tokenizer_config: unknown fields \['dim'\]"):
        _compose(tiny_vlm_parts, perceiver={"dim": 32})
    with pytest.raises(ConfigError, match=r"unknown keys \['resampler'\]"):
        _compose(tiny_vlm_parts, resampler={"num_queries": 4})

    model, tok = _compose(tiny_vlm_parts)
    proc = xgen_mm_processor.training_processor(model, tok, image_config(48))
    square = _halves(48, 48)
    with pytest.raises(InputError, match="2 images given but the samples have 1 image placeholders"):
        proc(messages=QUESTION, images=[square, square])                            # too many images
    batch = proc(messages=QUESTION, images=[square])                                # 3 views, 3 * L placeholders
    with pytest.raises(InputError, match=r"9 image placeholder tokens in the batch but 18 image tokens from 2 image"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"].repeat(2, 1, 1, 1),
              image_sizes=batch["image_sizes"].repeat(2, 1))                        # an image more than the prompt
    with pytest.raises(InputError, match=r"pixel_values holds 2 views but image_sizes \[\(48, 48\)\] need 3"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:2], image_sizes=batch["image_sizes"])
    with pytest.raises(InputError, match="needs image_sizes"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])
    # a checkpoint whose image processor tiles on other canvases than the model's
    ocellus.save(model, tmp_path, tokenizer=tok)
    export_processor(model, tok, image_config(48), tmp_path)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "image_grid_pinpoints": [[96, 96]]}))
    with pytest.raises(ConfigError, match=r"image_grid_pinpoints differ between the image processor \[\[96, 96\]\]"):
        ocellus.load_processor(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "crop_size": {"height": 24, "width": 24}}))
    with pytest.raises(ConfigError, match="cuts 24 px tiles but the vision tower reads 48 px views"):
        ocellus.load_processor(tmp_path)
    # 48 px tiles, but every view resized to 40 (no crop): the sampler would read 40 px views as 48 px ones
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "size": {"height": 40, "width": 40}}))
    with pytest.raises(ConfigError, match="makes 40x40 views but the vision tower takes 48x48"):
        ocellus.load_processor(tmp_path)


def test_shipped_recipe_trains_exports_and_is_scored(tiny_vlm_parts, tmp_path):
    from _vlm_recipes import train_tiny_vlm_recipe
    from ocellus.eval.harness import evaluate
    out = tmp_path / "run"
    losses = train_tiny_vlm_recipe(RECIPE, tiny_vlm_parts, out, steps=4, n=32, batch_size=8,
                                   extra=["model.perceiver.num_latents=4"])
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["model_type"] == "ocellus_xgen_mm" and cfg["vision_tokenizer_config"]["num_latents"] == 4
    pre = json.loads((out / "model" / "preprocessor_config.json").read_text())
    assert pre["image_grid_pinpoints"] == [[48, 96], [96, 48], [96, 96], [144, 48], [48, 144]]   # 1x2 .. 1x3 tiles
    batch = ocellus.load_processor(out / "model")(messages=QUESTION, images=[_halves(48, 48)])
    assert int((batch["input_ids"] == cfg["image_token_index"]).sum()) == 3 * 4    # 1x2 canvas: 3 views x 4 latents
    result = evaluate(out / "model", "shapes-vqa", n=4, batch_size=4, printer=lambda line: None)
    assert 0.0 <= result["table"]["all"][1] <= 1.0
