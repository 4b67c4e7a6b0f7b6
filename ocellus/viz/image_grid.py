"""Image batches -> one PNG grid (rows of samples, e.g. one row per class)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ocellus.errors import InputError


def image_grid(images: torch.Tensor, nrow: int, pad: int = 1, scale: int = 1) -> Image.Image:
    """images [N, C, H, W] in [-1, 1] (C = 1 or 3) -> a PIL grid with nrow images per row."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InputError(f"image_grid takes [N, 1|3, H, W], got {tuple(images.shape)}")
    if nrow <= 0:
        raise InputError(f"nrow must be positive, got {nrow}")
    N, C, H, W = images.shape
    rows = -(-N // nrow)
    canvas = torch.ones(C, rows * (H + pad) + pad, nrow * (W + pad) + pad)            # white background
    for i, img in enumerate(images.detach().float().cpu().clamp(-1, 1)):
        r, c = divmod(i, nrow)
        canvas[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = img
    arr = ((canvas + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()               # [H', W', C]
    pil = Image.fromarray(arr[..., 0] if C == 1 else arr, mode="L" if C == 1 else "RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST) if scale > 1 else pil


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow, scale=scale).save(path)
    return path
