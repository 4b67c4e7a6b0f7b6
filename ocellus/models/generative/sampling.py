"""Sampling a trained image generator with a recipe's / the CLI's generation options (inference, not training:
train/generative.py's sample grids and quality numbers and `ocellus generate-image` both call it).
"""
from __future__ import annotations

import torch

from ocellus.errors import ConfigError, InputError
from ocellus.models.generative.text_conditioning import TextDiffusionModel


def sample_images(model, labels, gen: dict, seed: int = 0) -> torch.Tensor:
    """Generated images for labels [B] (a text-conditioned diffusion model: B captions) with the recipe's / CLI's
    generation options."""
    kind = model.spec["kind"]
    g = torch.Generator().manual_seed(seed)
    model.eval()
    if kind == "diffusion":
        return model.generate(labels, steps=int(gen.get("steps", 50)), sampler=gen.get("sampler", "ddim"),
                              guidance_scale=float(gen.get("guidance_scale", 1.0)), generator=g)
    if kind == "maskgit":
        return model.generate(labels, steps=int(gen.get("steps", 8)),
                              guidance_scale=float(gen.get("guidance_scale", 1.0)), generator=g)
    if kind == "ar":
        return model.generate(labels, top_k=gen.get("top_k", 32), temperature=float(gen.get("temperature", 1.0)),
                              seed=seed)
    raise ConfigError(f"a {kind!r} model is a tokenizer: it reconstructs images, it does not generate them")


def parse_prompt(prompt: str, classes: list[str]) -> list[int]:
    """'3' -> [3]; 'all' -> every class; 'circle,star' -> two classes. Unknown names raise."""
    if prompt.strip() == "all":
        return list(range(len(classes)))
    out = []
    for name in (p.strip() for p in prompt.split(",")):
        if name not in classes:
            raise InputError(f"unknown class {name!r}: this model generates {classes} (or 'all')")
        out.append(classes.index(name))
    return out


def prompt_conditions(model, prompt: str, n: int):
    """`--prompt` as what sample_images takes, each prompt n times (one grid row each) -> (conditions, rows).
    Class names ('3', 'circle,star', 'all') -> labels [rows * n]; a text-conditioned model takes captions
    separated by '|' ('A red circle.|A blue star.') -> rows * n strings."""
    if isinstance(model, TextDiffusionModel):
        captions = [c.strip() for c in prompt.split("|")]
        if not all(captions):
            raise InputError(f"prompt {prompt!r} has an empty caption: separate captions with '|'")
        return [c for c in captions for _ in range(n)], len(captions)
    classes = parse_prompt(prompt, model.spec.get("class_names") or [])
    return torch.tensor(classes).repeat_interleave(n), len(classes)
