"""Scene pretraining of the Qwen2-VL / Qwen2.5-VL vision tower (task vit_classify, model.config model_type
qwen2_vl_vision / qwen2_5_vl_vision; train/vit_scene.SceneQwen2ViTClassifier) and a qwen2_vl recipe starting from
it (vision_from): one training step equals the step written out here (patches cut by hand, the row-major targets
taken in the tower's merge-group order), the export loads into the composed model's tower exactly, and a tower
that does not fit the recipe is a ConfigError naming what differs."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ocellus
from ocellus.data.image_tiling import qwen2vl_patchify
from ocellus.data.shapes import make_scene, render
from ocellus.errors import ConfigError
from ocellus.models.families.qwen2_vl import modeling as qwen2_vl
from ocellus.train.recipe_data import shapes_config
from ocellus.train.tasks import build_dataset, build_model, vit_classify
from ocellus.train.vit_scene import SceneQwen2ViTClassifier, patch_order
from ocellus.train.vlm_export import training_processor

TOWERS = {"qwen2_vl": {"model_type": "qwen2_vl_vision", "depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 8, "spatial_merge_size": 2},
          "qwen2_5_vl": {"model_type": "qwen2_5_vl_vision", "depth": 2, "hidden_size": 32, "num_heads": 2,
                         "intermediate_size": 48, "patch_size": 8, "spatial_merge_size": 2, "window_size": 32,
                         "fullatt_block_indexes": [1], "tokens_per_second": 2}}


def _recipe(variant="qwen2_vl", size=64, **model) -> dict:
    return {"task": "vit_classify", "seed": 0, "model": {"config": dict(TOWERS[variant]), **model},
            "data": {"source": "shapes", "n": 8, "seed": 2, "image_size": size, "labels": "objects", "max_objects": 4}}


def test_patch_order_is_the_order_patchify_gives_the_tower():
    """Row k of qwen2vl_patchify's output is the row-major patch patch_order[k] (the image repeated over the
    temporal patch), so row-major targets indexed by patch_order line up with the tower's outputs."""
    pixels = torch.randn(3, 32, 48)                                  # 4 x 6 patches of 8, 2 x 3 merge groups
    patches, (t, h, w) = qwen2vl_patchify(pixels, 8, 2, 2)
    grid = pixels.view(3, h, 8, w, 8).permute(1, 3, 0, 2, 4)         # [h, w, C, p, p] row-major patches
    by_hand = torch.stack([torch.stack([grid[k // w, k % w]] * 2, 1).flatten() for k in range(h * w)])
    order = patch_order(h, w, 2)
    assert torch.equal(patches, by_hand[order])
    assert order[:8].tolist() == [0, 1, 6, 7, 2, 3, 8, 9]           # merge groups, row-major, 2x2 each


def _step_by_hand(model: SceneQwen2ViTClassifier, batch: dict) -> torch.Tensor:
    """The scene loss written out: patches cut from the pixels in merge-group order, the tower over all images
    packed (grid_thw), the classes present from the mean patch state, each patch's class and box against the
    target of the patch it is."""
    cfg = model.encoder.config
    p, m = cfg.patch_size, cfg.spatial_merge_size
    pixels = batch["pixel_values"]
    n, _, height, width = pixels.shape
    h, w = height // p, width // p
    order = [(gr * m + i) * w + gc * m + j for gr in range(h // m) for gc in range(w // m)
             for i in range(m) for j in range(m)]                  # row-major index of each tower patch
    rows = []
    for image in pixels:
        for k in order:
            r, c = divmod(k, w)
            cell = image[:, r * p:(r + 1) * p, c * p:(c + 1) * p]   # [C, p, p]
            rows.append(torch.stack([cell, cell], 1).flatten())      # (C, T, p, p): the frame twice
    hidden = model.encoder(torch.stack(rows), torch.tensor([[1, h, w]] * n)).view(n, h * w, -1)
    k = model.classifier.out_features
    loss = F.binary_cross_entropy_with_logits(model.classifier(hidden.mean(1)), batch["labels"].float())
    loss = loss + F.cross_entropy(model.patch_classifier(hidden).reshape(-1, k + 1),
                                  batch["patch_labels"][:, order].reshape(-1))
    return loss + model.box_loss * (model.patch_box(hidden) - batch["patch_boxes"][:, order]).abs().mean()


@pytest.mark.parametrize("variant", list(TOWERS))
def test_one_training_step_is_the_step_written_out(variant):
    torch.manual_seed(0)
    recipe = _recipe(variant, box_loss=2.0)
    model = build_model(recipe, None)
    assert isinstance(model, SceneQwen2ViTClassifier) and model.encoder.config.variant == variant
    dataset, collate = build_dataset(recipe, None, model)
    batch = collate([dataset[i] for i in range(3)])
    assert batch["patch_labels"].shape == (3, 64) and batch["patch_boxes"].shape == (3, 64, 4)
    order = patch_order(8, 8, 2)
    assert not torch.equal(batch["patch_labels"][:, order], batch["patch_labels"])   # the order matters here
    models = {"adapter": model, "by_hand": copy.deepcopy(model)}
    losses = {}
    for name, net in models.items():
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)
        loss = net(**batch).loss if name == "adapter" else _step_by_hand(net, batch)
        loss.backward()
        opt.step()
        losses[name] = loss.item()
    assert losses["adapter"] == pytest.approx(losses["by_hand"], rel=1e-6)
    after = dict(models["by_hand"].named_parameters())
    for key, value in models["adapter"].named_parameters():
        torch.testing.assert_close(value, after[key], rtol=0, atol=1e-6, msg=key)


def test_recipe_errors():
    single = _recipe()
    single["data"]["labels"] = "single"
    with pytest.raises(ConfigError, match="data.labels: objects"):
        build_model(single, None)
    with pytest.raises(ConfigError, match="image_size 56 is not a multiple of patch_size \\* spatial_merge_size = 16"):
        build_model(_recipe(size=56), None)


def _tower(variant: str, out) -> tuple[dict, torch.nn.Module]:
    """A tower trained-looking (weights not the init's), exported as task vit_classify exports it."""
    recipe = _recipe(variant)
    model = build_model(recipe, None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = vit_classify.export(recipe, model, None, out / variant / "model")
    return recipe, path


@pytest.mark.parametrize("variant", list(TOWERS))
def test_vision_from_loads_the_tower_exactly(variant, tiny_vlm_parts, tmp_path):
    recipe, path = _tower(variant, tmp_path)
    tower = ocellus.load(path)
    assert type(tower).__name__ == "Qwen2VisionTransformer" and tower.config.variant == variant
    text = tiny_vlm_parts / "text" / "model"
    tok = getattr(ocellus.load_processor(text), "tokenizer", ocellus.load_processor(text))
    vision = {k: v for k, v in TOWERS[variant].items() if k != "model_type"}
    spec = {"architecture": variant, "llm_from": str(text), "vision_from": str(path),
            "config": {"vision_config": vision, "mrope_section": [2, 1, 1]}}
    for given in (spec, {**spec, "config": {"mrope_section": [2, 1, 1]}}):   # with the recipe's vision_config, without
        model = qwen2_vl.compose(given, tok)
        assert replace(model.visual.config, out_hidden_size=tower.config.out_hidden_size) == tower.config
        state = tower.state_dict()
        assert model.visual.state_dict().keys() == state.keys()
        assert all(torch.equal(v, state[k]) for k, v in model.visual.state_dict().items())
    # what the VLM's processor hands the tower for a scene = what the pretraining's dataset patchified
    dataset, _ = build_dataset(recipe, None, build_model(recipe, None))
    cfg = shapes_config(recipe["data"])
    image = render(make_scene(np.random.default_rng([cfg.seed, 0]), cfg))    # the dataset's scene 0
    batch = training_processor(model, tok, 64)(
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}], images=[image])
    assert torch.allclose(batch["pixel_values"], qwen2vl_patchify(dataset[0][0], 8, 2, 2)[0], atol=1e-6)


def test_a_tower_that_does_not_fit_is_a_config_error(tiny_vlm_parts, tmp_path):
    _, path = _tower("qwen2_vl", tmp_path)
    text = tiny_vlm_parts / "text" / "model"
    tok = getattr(ocellus.load_processor(text), "tokenizer", ocellus.load_processor(text))
    vision = {k: v for k, v in TOWERS["qwen2_vl"].items() if k != "model_type"}
    spec = {"architecture": "qwen2_vl", "llm_from": str(text), "vision_from": str(path),
            "config": {"vision_config": {**vision, "depth": 3, "patch_size": 4}, "mrope_section": [2, 1, 1]}}
    with pytest.raises(ConfigError, match="does not describe the vision_from tower .*depth: recipe 3, tower 2; "
                                          "patch_size: recipe 4, tower 8"):
        qwen2_vl.compose(spec, tok)
    with pytest.raises(ConfigError, match="is a qwen2_vl tower, not a qwen2_5_vl one"):
        qwen2_vl.compose({**spec, "architecture": "qwen2_5_vl", "config": {"mrope_section": [2, 1, 1]}}, tok)
    with pytest.raises(ConfigError, match="model_type 'clip_vision_model' is not a Qwen2-VL vision tower"):
        qwen2_vl.compose({**spec, "vision_from": str(tiny_vlm_parts / "vit" / "model")}, tok)


def test_saving_a_tower_imports_no_other_family(tmp_path):
    """The export names its family: saving does not import every registered family's checkpoint module to find
    the one that builds the class (a family mid-edit elsewhere in the tree once failed a finished ViT run's export)."""
    import subprocess
    import sys
    code = ("import sys; from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig, Qwen2VisionTransformer; "
            "from ocellus.models.families.qwen2_vl.tower import save_tower; "
            "cfg = Qwen2VisionConfig.from_hf({'depth': 1, 'embed_dim': 16, 'num_heads': 2, 'patch_size': 4}, 'qwen2_vl'); "
            f"save_tower(Qwen2VisionTransformer(cfg), {str(tmp_path / 'tower')!r}); "
            "print(' '.join(m for m in sys.modules if m.startswith('ocellus.models.families.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in loaded if not m.startswith("ocellus.models.families.qwen2_vl")
                and m != "ocellus.models.families.common"], loaded
    assert type(ocellus.load(tmp_path / "tower")).__name__ == "Qwen2VisionTransformer"
