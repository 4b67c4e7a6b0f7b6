"""(image, caption) pairs of the shapes world, for the image-text tasks (CLIP / SigLIP / MoCo, ALBEF / BLIP and
BLIP's CapFilt) and their held-out evaluations (eval/retrieval.py, eval/decoding.py): scenes drawn by index from a
data section (image_size, min_objects, max_objects) and a seed, a stable id per caption, captions compared as text.

Training and evaluation draw from here, so a held-out seed gives the same scenes to both."""
from __future__ import annotations

import hashlib

import numpy as np

from ocellus.data.shapes import caption, make_scene, render, Scene, ShapesConfig


def pairs_config(data: dict, seed: int) -> ShapesConfig:
    """data section -> the scenes' ShapesConfig (1-2 objects by default, none smaller than 6.5 px)."""
    size = int(data.get("image_size", 32))
    return ShapesConfig(image_size=size, seed=seed, min_size=max(0.18, 6.5 / size),
                        min_objects=int(data.get("min_objects", 1)), max_objects=int(data.get("max_objects", 2)))


def scenes(data: dict, seed: int, n: int) -> list[Scene]:
    """The first n scenes of the data section's world: scene i is drawn from default_rng([seed, i])."""
    cfg = pairs_config(data, seed)
    return [make_scene(np.random.default_rng([cfg.seed, i]), cfg) for i in range(n)]


def shapes_pairs(data: dict, seed: int, n: int, start: int = 0):
    """-> i -> (PIL image, caption) of scene start + i (the scenes of `scenes`, made on access)."""
    cfg = pairs_config(data, seed)

    def pair(i):
        scene = make_scene(np.random.default_rng([cfg.seed, start + i]), cfg)
        return render(scene), caption(scene)
    return pair


def caption_id(text: str) -> int:
    """A stable id per caption text (equal captions -> equal ids, in every process)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:7], "big")


def same_caption(a: str, b: str) -> bool:
    """Equal as captions: case, full stops, commas and spacing aside."""
    norm = lambda s: " ".join(s.lower().replace(".", " ").replace(",", " ").split())   # noqa: E731
    return norm(a) == norm(b)


__all__ = ["pairs_config", "scenes", "shapes_pairs", "caption_id", "same_caption"]
