"""task vit_classify: a ViT + linear head trained with cross-entropy on image labels (the original ViT
recipe); data.labels objects: the scene objective of train/vit_scene.py (classes present, each patch's class,
optionally its object's box). The encoder is exported as a CLIPVisionModel checkpoint (+ classifier_head.json).
A config of model_type qwen2_vl_vision / qwen2_5_vl_vision (Qwen2-VL's vision_config keys, as a qwen2_vl recipe's
model.config.vision_config) trains a Qwen2-VL / Qwen2.5-VL tower on the scene objective instead
(vit_scene.SceneQwen2ViTClassifier), exported in Ocellus' ocellus_qwen2_vit format for a qwen2_vl recipe's vision_from.

model: {config: {...a vision config}, num_classes, box_loss, box_background: cell | none} | {from: DIR}
data: {source: shapes | digits, n, seed, image_size, labels: single | objects, min_objects, max_objects}
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ocellus.data.digits import digits_samples
from ocellus.data.image import preprocess
from ocellus.data.shapes import make_scene, render
from ocellus.errors import ConfigError
from ocellus.models.families.vit.checkpoint import save_vision
from ocellus.models.families.qwen2_vl.tower import save_tower
from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig, Qwen2VisionTransformer
from ocellus.models.vision.vit import VisionTransformer, ViTClassifier, ViTConfig
from ocellus.train.recipe import check_recipe
from ocellus.train.recipe_data import EncodedDataset, image_config, shapes_config
from ocellus.train.run import run_trainer
from ocellus.train.vit_scene import check_box_background, patch_boxes, patch_classes, SceneQwen2ViTClassifier, \
    SceneViTClassifier, stack_labels

# a Qwen2-VL tower's vision_config model_type -> its variant (models/vision/qwen2_vit.py)
QWEN2_VISION = {"qwen2_vl_vision": "qwen2_vl", "qwen2_5_vl_vision": "qwen2_5_vl"}


def validate(recipe: dict, where: str = "recipe") -> None:
    check_recipe(recipe, where, data="image", parts=("llm", "vision"))


def build_tokenizer(recipe: dict, out: Path):
    return None   # a ViT reads pixels only


def build_model(recipe: dict, tok):
    spec = recipe.get("model") or {}
    num_classes = int(spec.get("num_classes", 0) or 0) or _num_classes(recipe)
    config = dict(spec.get("config") or {})
    if config.get("model_type") in QWEN2_VISION:
        return _qwen2_scene_model(recipe, config, num_classes, float(spec.get("box_loss", 0.0)))
    encoder = VisionTransformer(ViTConfig.from_hf(config))
    if (recipe.get("data") or {}).get("labels") == "objects":
        return SceneViTClassifier(encoder, num_classes, box_loss=float(spec.get("box_loss", 0.0)))
    if spec.get("box_loss"):
        raise ConfigError("model.box_loss needs data.labels: objects (boxes are per patch of a scene)")
    return ViTClassifier(encoder, num_classes)


def _qwen2_scene_model(recipe: dict, config: dict, num_classes: int, box_loss: float) -> SceneQwen2ViTClassifier:
    """A Qwen2-VL / Qwen2.5-VL tower on the scene objective: scenes only (it has no CLS token for one label),
    whose size the tower's merged patches tile."""
    data = recipe.get("data") or {}
    variant = QWEN2_VISION[config.pop("model_type")]
    vision = Qwen2VisionConfig.from_hf(config, variant)
    if data.get("labels") != "objects":
        raise ConfigError(f"a {variant} tower (model.config model_type {variant}_vision) trains on scenes only: "
                          f"set data.labels: objects (got {data.get('labels', 'single')!r})")
    size, unit = int(data.get("image_size", 32)), vision.patch_size * vision.spatial_merge_size
    if size % unit:
        raise ConfigError(f"data.image_size {size} is not a multiple of patch_size * spatial_merge_size = {unit}; "
                          f"the {variant} tower's merge groups must tile the image")
    return SceneQwen2ViTClassifier(Qwen2VisionTransformer(vision), num_classes, box_loss=box_loss)


def _num_classes(recipe: dict) -> int:
    data = recipe["data"]
    if data["source"] == "digits":
        return 10
    cfg = shapes_config(data)
    return len(cfg.shapes) * len(cfg.colours)


def build_dataset(recipe: dict, tok, model):
    data = recipe["data"]
    n = int(data.get("n", 1000))
    size = int(data.get("image_size", 32))
    icfg = image_config(size)
    if data["source"] == "digits":
        rows = digits_samples("train", seed=int(data.get("seed", 0)), image_size=size)
        return EncodedDataset(len(rows), lambda i: (preprocess([rows[i]["images"][0]], icfg)[0], rows[i]["label"])), \
            stack_labels
    labels = data.get("labels", "single")
    if labels not in ("single", "objects"):
        raise ConfigError(f"data.labels must be 'single' (one object per image, its (shape, colour) class) or "
                          f"'objects' (min..max_objects objects: the classes present + each patch's class), "
                          f"got {labels!r}")
    cfg = shapes_config(data)
    if labels == "single":
        cfg = dataclasses.replace(cfg, min_objects=1, max_objects=1)
    spec = recipe.get("model") or {}
    background = check_box_background(spec.get("box_background", "cell"))
    if "box_background" in spec and not spec.get("box_loss"):
        raise ConfigError("model.box_background sets the box head's background target; it needs model.box_loss > 0")
    classes = [(s, c) for s in cfg.shapes for c in cfg.colours]
    patch = model.encoder.config.patch_size

    def make(i):
        scene = make_scene(np.random.default_rng([cfg.seed, i]), cfg)
        image = render(scene)
        pixels = preprocess([image], icfg)[0]
        if labels == "single":  # the class of the one object
            obj = scene.objects[0]
            return pixels, classes.index((obj.shape, obj.colour))
        present = torch.zeros(len(classes))
        for obj in scene.objects:
            present[classes.index((obj.shape, obj.colour))] = 1.0
        row = (pixels, present, patch_classes(scene, image, classes, patch, size))
        return row + (patch_boxes(scene, image, patch, size, background),) if getattr(model, "patch_box", None) else row
    return EncodedDataset(n, make), stack_labels


def export(recipe: dict, model, tok, path: Path) -> Path:
    if isinstance(model.encoder, Qwen2VisionTransformer):
        save_tower(model.encoder, path)       # ocellus_qwen2_vit: what a qwen2_vl recipe's vision_from loads
    else:
        save_vision(model.encoder, path)
    (path / "classifier_head.json").write_text(json.dumps({"num_classes": model.classifier.out_features}))
    return path


def run(recipe: dict) -> Path:
    return run_trainer(recipe, sys.modules[__name__])


__all__ = ["validate", "build_tokenizer", "build_model", "build_dataset", "export", "run"]
