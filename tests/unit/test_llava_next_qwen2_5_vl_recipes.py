"""LLaVA-NeXT and Qwen2.5-VL composed from recipes (model.architecture llava_next / qwen2_5_vl): each shipped
recipe, pointed at the tiny pretrained parts, composes, trains 2 steps through ocellus.train.tasks and exports;
the export reopens (processor from the directory + model) to the processor and the logits of the trained
model (the recipe's composition + the tensors its training checkpoint saved). Bad model keys are errors."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ocellus
from ocellus.data.shapes import ShapesConfig, make_scene, render
from ocellus.errors import ConfigError
from ocellus.models.families.qwen2_vl import modeling as qwen2_vl
from ocellus.models.families.llava_next import modeling as llava_next
from ocellus.hub.families import family_module
from ocellus.train.run import _init_from, build_tokenizer
from ocellus.train.tasks import build_model, load_recipe, run_recipe
from ocellus.train.vlm_export import training_processor

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {"llava_next": ROOT / "recipes" / "llava_next_tiny_shapes" / "train.yaml",
           "qwen2_5_vl": ROOT / "recipes" / "qwen2_5_vl_tiny_shapes" / "train.yaml"}
ARCHITECTURES = {"llava_next": "LlavaNextForConditionalGeneration",
                 "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


def _recipe(arch: str, parts: Path, out: Path, towers: Path) -> dict:
    text = parts / "text" / "model"
    overrides = ["train.progress=false", "train.log_every=1", "train.warmup_steps=1", "train.max_steps=2",
                 "train.batch_size=4", "data.n=8", f"train.out_dir={out}", f"model.llm_from={text}",
                 f"tokenizer.from={text}"]
    if arch == "llava_next":
        overrides.append(f"model.vision_from={parts / 'vit' / 'model'}")
    else:
        overrides += ["model.config.mrope_section=[2, 1, 1]",    # the fixture's decoder has 8-dim heads
                      f"model.vision_from={towers / 'qwen2_5_vl' / 'model'}"]
    return load_recipe(RECIPES[arch], overrides)


@pytest.mark.parametrize("arch", list(RECIPES))
def test_recipe_trains_exports_and_reopens_to_the_same_logits(arch, tiny_vlm_parts, qwen2_towers, tmp_path):
    recipe = _recipe(arch, tiny_vlm_parts, tmp_path, qwen2_towers)
    path = run_recipe(recipe)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURES[arch]] and config["model_type"] == arch

    tok = build_tokenizer(recipe, tmp_path)
    trained = build_model(recipe, tok)
    _init_from(trained, tmp_path / "checkpoints")          # what training saved: every trainable tensor
    model, proc = ocellus.load(path).eval(), ocellus.load_processor(path)
    if arch == "llava_next":
        assert [list(p) for p in model.packer.grid_pinpoints] == llava_next.default_pinpoints(48)
        assert torch.equal(model.packer.image_newline, trained.packer.image_newline)
    else:
        vc = model.visual.config
        assert (model.variant, vc.window_size, vc.fullatt_block_indexes, vc.tokens_per_second) == \
            ("qwen2_5_vl", 32, (1, 3), 2)

    size = recipe["data"]["image_size"]
    image = render(make_scene(np.random.default_rng(0), ShapesConfig(image_size=size)))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    batch = proc(messages=messages, images=[image])
    want = training_processor(trained, tok, size)(messages=messages, images=[image])
    assert batch.keys() == want.keys() and all(torch.equal(batch[k], want[k]) for k in want)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, trained.eval()(**batch).logits, rtol=0, atol=1e-6)


def test_compose_refuses_unknown_keys_and_bad_canvases(tiny_vlm_parts):
    from ocellus.data.tokenizer import Tokenizer
    text = str(tiny_vlm_parts / "text" / "model")
    tok = Tokenizer.from_dir(text)
    assert family_module("llava_next").compose is llava_next.compose
    assert family_module("qwen2_5_vl").compose is qwen2_vl.compose
    # transformers' 336 px canvases (1x2, 2x1, 2x2, 3x1, 1x3 tiles) in tiles of the tower's size
    assert llava_next.default_pinpoints(48) == [[48, 96], [96, 48], [96, 96], [144, 48], [48, 144]]
    spec = {"architecture": "llava_next", "vision_from": str(tiny_vlm_parts / "vit" / "model"), "llm_from": text}
    with pytest.raises(ConfigError, match="unknown keys.*'pinpoints'"):
        llava_next.compose({**spec, "pinpoints": [[96, 96]]}, tok)
    with pytest.raises(ConfigError, match="multiples of the tile size 48"):
        llava_next.compose({**spec, "image_grid_pinpoints": [[48, 100]]}, tok)
    with pytest.raises(ConfigError, match="image_grid_pinpoints must be a list"):
        llava_next.compose({**spec, "image_grid_pinpoints": [96, 96]}, tok)
    with pytest.raises(ConfigError, match="feature_select"):     # tiles need the 8x8 patch map, no CLS
        llava_next.compose({**spec, "feature_select": "full"}, tok)
    q = {"architecture": "qwen2_5_vl", "llm_from": text, "config": {"mrope_section": [2, 1, 1]}}
    with pytest.raises(ConfigError, match="unknown keys.*'connector'"):
        qwen2_vl.compose({**q, "connector": {"depth": 2}}, tok)
    with pytest.raises(ConfigError, match="vision_config for qwen2_5_vl: unknown keys.*'embed_dim'"):
        qwen2_vl.compose({**q, "config": {**q["config"], "vision_config": {"embed_dim": 32}}}, tok)
    with pytest.raises(ConfigError, match="composes"):
        qwen2_vl.compose({**q, "architecture": "qwen3_vl"}, tok)
