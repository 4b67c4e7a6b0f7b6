"""Sampling a trained image generator with a recipe's / the CLI's generation options (inference, not training:
train/generative.py's sample grids and quality numbers and `ocellus generate-image` both call it).
"""
from __future__ import annotations

import torch

from ocellus.errors import ConfigError, InputError


def sample_images(model, labels: torch.Tensor, gen: dict, seed: int = 0) -> torch.Tensor:
    """Generated images for labels [B] with the recipe's / CLI's generation options."""
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
