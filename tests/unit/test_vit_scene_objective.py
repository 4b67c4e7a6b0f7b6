"""The ViT scene objective (task vit_classify, data.labels: objects): which classes are present (CLS,
binary cross-entropy), what covers each patch (cross-entropy) and, with model.box_loss, where: every patch
token regresses its owner's box (L1). Targets checked on a hand-made scene, the loss against the three terms
written out, and the recipe path end to end."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ocellus.data.shapes import Obj, Scene, render
from ocellus.errors import ConfigError
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.train.tasks import build_dataset, build_model
from ocellus.train.vit_scene import SceneViTClassifier, patch_boxes, patch_classes

SCENE = Scene(48, "white", (Obj("square", "red", (6, 0, 18, 12)), Obj("circle", "blue", (30, 30, 47, 47))))
VIT = {"model_type": "clip_vision_model", "image_size": 48, "patch_size": 12, "hidden_size": 32,
       "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.mark.parametrize("size,patch", [(48, 6), (96, 12)])   # the ViT's input size need not be the scene's
def test_patch_boxes_are_the_owners_box_or_the_patch_cell(size, patch):
    boxes = patch_boxes(SCENE, render(SCENE), patch=patch, size=size).reshape(8, 8, 4)
    square = torch.tensor([6, 0, 18, 12]) / 48
    circle = torch.tensor([30, 30, 47, 47]) / 48
    for r in range(8):
        for c in range(8):
            if 0 <= r < 2 and 1 <= c < 3:
                expected = square                       # the square's patches carry the square's box
            elif r >= 5 and c >= 5:
                expected = circle
            else:                                        # background: its own cell, x (column) first
                expected = torch.tensor([c, r, c + 1, r + 1]) / 8
            assert torch.allclose(boxes[r, c], expected), (r, c, boxes[r, c], expected)
    # The patches that carry a box are exactly the ones patch_classes gives an object class.
    classes = patch_classes(SCENE, render(SCENE), [("square", "red"), ("circle", "blue")], patch=6, size=48)
    assert ((classes < 2).reshape(8, 8) == torch.from_numpy(
        np.array([[(0 <= r < 2 and 1 <= c < 3) or (r >= 5 and c >= 5) for c in range(8)] for r in range(8)]))).all()


def test_scene_loss_is_the_three_terms():
    torch.manual_seed(0)
    model = SceneViTClassifier(VisionTransformer(ViTConfig.from_hf(VIT)), num_classes=5, box_loss=3.0)
    x = torch.randn(2, 3, 48, 48)
    labels = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
    patch_labels = torch.randint(0, 6, (2, 16))
    boxes = torch.rand(2, 16, 4)
    out = model(x, labels=labels, patch_labels=patch_labels, patch_boxes=boxes)
    enc = model.encoder(x)
    patches = enc.last_hidden_state[:, 1:]                                   # CLS first
    expected = (F.binary_cross_entropy_with_logits(model.classifier(enc.pooler_output), labels.float())
                + F.cross_entropy(model.patch_classifier(patches).reshape(-1, 6), patch_labels.reshape(-1))
                + 3.0 * (model.patch_box(patches) - boxes).abs().mean())
    assert torch.allclose(out.loss, expected, atol=1e-6), (out.loss, expected)
    # Without box_loss there is no box head, and boxes given are not a loss term.
    plain = SceneViTClassifier(VisionTransformer(ViTConfig.from_hf(VIT)), num_classes=5)
    assert plain.patch_box is None


def _recipe(**model):
    return {"task": "vit_classify", "seed": 0, "model": {"config": VIT, **model},
            "data": {"source": "shapes", "n": 8, "seed": 2, "image_size": 48, "labels": "objects", "max_objects": 3}}


def test_recipe_box_loss_reaches_the_batch_and_the_loss():
    recipe = _recipe(box_loss=2.0)
    model = build_model(recipe, None)
    assert isinstance(model, SceneViTClassifier) and model.box_loss == 2.0
    dataset, collate = build_dataset(recipe, None, model)
    batch = collate([dataset[i] for i in range(4)])
    assert batch["patch_boxes"].shape == (4, 16, 4) and batch["patch_labels"].shape == (4, 16)
    assert ((batch["patch_boxes"] >= 0) & (batch["patch_boxes"] <= 1)).all()
    with_boxes = model(**batch).loss
    without = model(**{k: v for k, v in batch.items() if k != "patch_boxes"}).loss
    assert with_boxes > without                     # the box term is in the loss
    plain = build_model(_recipe(), None)
    assert "patch_boxes" not in build_dataset(_recipe(), None, plain)[1]([build_dataset(_recipe(), None, plain)[0][0]])
    single = _recipe(box_loss=1.0)
    single["data"] = {**single["data"], "labels": "single"}
    with pytest.raises(ConfigError, match="box_loss"):
        build_model(single, None)


def test_box_background_none_gives_background_patches_the_empty_box_and_objects_theirs():
    cell = patch_boxes(SCENE, render(SCENE), patch=6, size=48).reshape(8, 8, 4)
    none = patch_boxes(SCENE, render(SCENE), patch=6, size=48, background="none").reshape(8, 8, 4)
    objects = ((torch.arange(8)[:, None] < 2) & (torch.arange(8)[None] >= 1) & (torch.arange(8)[None] < 3)) | \
        ((torch.arange(8)[:, None] >= 5) & (torch.arange(8)[None] >= 5))               # the square's, the circle's
    assert torch.equal(none[objects], cell[objects])
    assert (none[~objects] == 0).all() and (cell[~objects] != 0).any(dim=-1).all()
    recipe = _recipe(box_loss=1.0, box_background="none")
    model = build_model(recipe, None)
    dataset, collate = build_dataset(recipe, None, model)
    batch = collate([dataset[i] for i in range(4)])
    background = batch["patch_labels"] == model.classifier.out_features       # the background class: the last
    assert background.any() and (batch["patch_boxes"][background] == 0).all()
    assert (batch["patch_boxes"][~background] != 0).any(dim=-1).all()
    with pytest.raises(ConfigError, match="box_background"):
        build_dataset(_recipe(box_loss=1.0, box_background="cells"), None, model)
    with pytest.raises(ConfigError, match="needs model.box_loss"):
        build_dataset(_recipe(box_background="none"), None, build_model(_recipe(), None))
