"""The contrastive tasks' model, data and export (train/tasks/contrastive.py runs them through run.run_trainer):

  task: contrastive   a CLIP or SigLIP dual encoder trained from scratch on (image, caption) pairs of
                      the shapes world: InfoNCE (CLIP) or sigmoid (SigLIP) loss, pairs with the same
                      caption are positives of each other (ids). Exported as a CLIPModel / SiglipModel
                      checkpoint + tokenizer + preprocessor_config.json.
  task: moco          MoCo v2 on two augmented views of each image (digits or shapes); the query
                      backbone is exported as a CLIPVisionModel checkpoint.

model (recipe section):
  architecture: clip | siglip                      (contrastive)
  vision: {image_size, patch_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads}
  text:   {hidden_size, ..., max_position_embeddings}   (contrastive; vocab/eos come from the tokenizer)
  projection_dim: 64                               (clip)
  moco: {dim, queue_size, momentum, temperature, mlp}   (moco)
data: {source: shapes | digits, n, seed, image_size, min_objects, max_objects, augment: {...AugmentConfig}}
eval: {n: 300}     after export: retrieval + zero-shot (contrastive) or the linear probe (moco), printed
                   and written to <out>/eval.json
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ocellus.data.augment import AugmentConfig, two_views
from ocellus.data.digits import digits_samples
from ocellus.data.image import image_config, IMAGE_MEAN, IMAGE_STD, preprocess
from ocellus.data.shapes_pairs import caption_id, shapes_pairs
from ocellus.data.shards import image_of, ImageText
from ocellus.errors import ConfigError
from ocellus.eval.retrieval import DIGITS_SOURCE_SIZE, evaluate
from ocellus.hub.checkpoint import save_model
from ocellus.models.families.vit.checkpoint import save_vision
from ocellus.models.contrastive.clip import build_dual_encoder
from ocellus.models.contrastive.moco import MoCo, MoCoConfig
from ocellus.models.text.clip_text import encode_texts, LEGACY_EOS_ID
from ocellus.models.vision.vit import VisionTransformer, ViTConfig
from ocellus.train.recipe_data import EncodedDataset


# ---- model -------------------------------------------------------------------------------------
def build_model(recipe: dict, tok):
    spec = recipe.get("model") or {}
    if "vision" not in spec:
        raise ConfigError(f"task {recipe['task']}: model.vision (a vision tower config) is required")
    if recipe["task"] == "moco":
        vit = VisionTransformer(ViTConfig.from_hf({"model_type": "clip_vision_model", **spec["vision"]}))
        return MoCo(vit, vit.config.hidden_size, MoCoConfig(**(spec.get("moco") or {})))
    kind = spec.get("architecture", "clip")
    if tok.eos_token_id is None or tok.eos_token_id == LEGACY_EOS_ID:
        raise ConfigError(f"the tokenizer's eos_token id is {tok.eos_token_id}; a CLIP text tower needs another "
                          f"(transformers reads eos id {LEGACY_EOS_ID} as the legacy argmax-pooling rule): train the "
                          "BPE with eos_token: '<|endoftext|>'")
    text = {**(spec.get("text") or {}), "vocab_size": len(tok), "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    return build_dual_encoder(kind, spec["vision"], text, projection_dim=spec.get("projection_dim"))


# ---- data --------------------------------------------------------------------------------------
image_cfg = image_config   # the recipes' preprocessing (data/image.py), by its old name here


def build_dataset(recipe: dict, tok, model):
    task, data = recipe["task"], recipe["data"]
    n, seed = int(data.get("n", 1000)), int(data.get("seed", 0))
    size = _image_size(model)
    icfg = image_config(size)
    if task == "contrastive":
        if data["source"] != "shapes":
            raise ConfigError(f"task contrastive trains on shapes captions; data.source {data['source']!r}")
        pair = shapes_pairs(data, seed, n)

        def make(i):
            image, text = pair(i)
            return preprocess([image], icfg)[0], text
        return EncodedDataset(n, make), caption_collate(tok, model)
    images = _moco_images(data, seed, n)
    aug = AugmentConfig(**{"size": size, **_tuples(data.get("augment") or {})})
    return EpochViews(len(images) if hasattr(images, "__len__") else n, images, aug, icfg, seed), collate_views


class EpochViews:
    """MoCo's indexed dataset: image i's two augmented views [2, 3, H, W] at epoch e, drawn from a generator
    seeded by (seed, i, e + 1): fresh views every epoch (an epoch visits an image at most once) and the same
    ones in a resumed run, whose loader restores the epoch and tells it here (BatchLoader calls set_epoch)."""

    def __init__(self, n: int, images, aug: AugmentConfig, image_config, seed: int):
        self.n, self.images, self.aug, self.image_config, self.seed = n, images, aug, image_config, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> torch.Tensor:
        v1, v2 = two_views(self.images(i), self.aug, random.Random(f"{self.seed}-{i}-{self.epoch + 1}"))
        return preprocess([v1, v2], self.image_config)


def shard_data(recipe: dict, tok, model):
    """The shard loader's hook (train/shard_loader.py): (decode a tar sample, collate). contrastive: (image,
    caption) pairs; moco: two augmented views of each image (captions unused)."""
    size = _image_size(model)
    if recipe["task"] == "contrastive":
        return ImageText(image_config(size)), caption_collate(tok, model)
    aug = AugmentConfig(**{"size": size, **_tuples(recipe["data"].get("augment") or {})})
    return ImageViews(image_config(size), aug, int(recipe.get("seed", 0))), collate_views


class ImageViews:
    """MoCo on shards: a raw tar sample -> its two augmented views [2, 3, H, W], drawn from a generator seeded
    by (seed, shard, key, epoch): new views at every pass, and the same ones in a resumed run (the position
    restores the epoch). A top-level class for loader workers."""

    def __init__(self, image_config, aug, seed: int):
        self.image_config, self.aug, self.seed = image_config, aug, seed

    def __call__(self, sample: dict):
        image = image_of(sample)
        rng = random.Random(f"{self.seed}-{sample['__shard__']}-{sample['__key__']}-{sample.get('__epoch__', 0)}")
        return preprocess(list(two_views(image, self.aug, rng)), self.image_config)


def collate_views(rows):
    """MoCo's batch: the query views and the key views, [B, 3, H, W] each."""
    return {"pixel_values": torch.stack([r[0] for r in rows]), "pixel_values_k": torch.stack([r[1] for r in rows])}


def caption_collate(tok, model):
    """-> collate([(pixel_values [3, H, W], caption), ...]) -> the dual encoder's batch: texts tokenized to
    its text tower's context, pixels stacked, ids = caption_id (equal captions are positives)."""
    max_len, pad_to_max = model.text_model.config.max_position_embeddings, not model.text_model.config.causal

    def collate(rows):
        texts = [r[1] for r in rows]
        batch = encode_texts(texts, tok, max_len, pad_to_max=pad_to_max)
        if pad_to_max:             # SigLIP trains on fixed-length texts without a mask, pooling the last position
            batch.pop("attention_mask")
        return {**batch, "pixel_values": torch.stack([r[0] for r in rows]),
                "ids": torch.tensor([caption_id(t) for t in texts]), "return_loss": True}
    return collate


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _moco_images(data: dict, seed: int, n: int):
    if data["source"] == "digits":
        rows = digits_samples("train", seed=0, image_size=DIGITS_SOURCE_SIZE)
        return _Indexable([r["images"][0] for r in rows])
    if data["source"] == "shapes":
        pair = shapes_pairs(data, seed, n)
        return lambda i: pair(i)[0]
    raise ConfigError(f"task moco: data.source must be digits or shapes, got {data['source']!r}")


class _Indexable(list):
    def __call__(self, i):
        return self[i]


def _image_size(model) -> int:
    tower = model.vision_model if hasattr(model, "vision_model") else model.encoder_q.backbone
    return int(tower.config.image_size)


# ---- export + evaluation -----------------------------------------------------------------------
def export(recipe: dict, model, tok, path: Path) -> Path:
    size = _image_size(model)
    if recipe["task"] == "moco":
        save_vision(model.encoder_q.backbone, path)
    else:
        save_model(model, path, tokenizer=tok)
    write_preprocessor(path, size)
    if recipe.get("eval") is not None:
        n = int((recipe.get("eval") or {}).get("n", 300))
        tasks = ("linear-probe",) if recipe["task"] == "moco" else ("retrieval", "zeroshot")
        results = {t: evaluate(path, t, n=n) for t in tasks}
        (path.parent / "eval.json").write_text(json.dumps(results, indent=1))
    return path


def write_preprocessor(path: Path, size: int) -> None:
    (Path(path) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
        "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3}, indent=2))


__all__ = ["build_model", "build_dataset", "shard_data", "export", "caption_id", "caption_collate", "shapes_pairs", "write_preprocessor"]
