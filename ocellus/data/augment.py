"""Image augmentations for self-supervised contrastive learning, with Pillow and torch (no torchvision).

MoCo v2's recipe (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning",
following SimCLR, Chen et al. 2020, sec. 3 / appendix A): random resized crop, colour jitter
(p=0.8), random grayscale (p=0.2), Gaussian blur (p=0.5), horizontal flip. Each op follows
torchvision's definition (crop area in `scale`, log-uniform aspect ratio in `ratio`, 10 tries then a
centre crop; jitter factors drawn from [1 - s, 1 + s] applied in a random order; hue shifted in
HSV). Every draw comes from the `random.Random` passed in, so a seed fixes the views exactly.

    view = augment(image, cfg, rng)            # PIL -> PIL
    v1, v2 = two_views(image, cfg, rng)        # the positive pair of MoCo / SimCLR
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ocellus.errors import ConfigError, InputError


@dataclass(frozen=True)
class AugmentConfig:
    size: int                                   # output side (square)
    scale: tuple[float, float] = (0.2, 1.0)     # crop area, fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio range
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1                            # shift in [-hue, hue] turns of the colour wheel (<= 0.5)
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)   # in pixels of the output

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size <= 0:
            raise ConfigError(f"augment size must be a positive int, got {self.size!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"augment scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"augment ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment {name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"augment hue must be in [0, 0.5], got {self.hue}")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise ConfigError("augment brightness/contrast/saturation must be >= 0")


def random_resized_crop_box(width: int, height: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height                    # fallback: the whole image, cropped to the ratio bounds
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by `shift` turns (HSV hue channel is 0..255 in Pillow)."""
    h, s, v = image.convert("HSV").split()
    h = Image.fromarray(((np.asarray(h, dtype=np.int16) + int(round(shift * 255))) % 256).astype(np.uint8))
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    ops = []
    for strength, enhancer in ((cfg.brightness, ImageEnhance.Brightness), (cfg.contrast, ImageEnhance.Contrast),
                               (cfg.saturation, ImageEnhance.Color)):
        if strength > 0:
            factor = rng.uniform(max(0.0, 1 - strength), 1 + strength)
            ops.append(lambda im, e=enhancer, f=factor: e(im).enhance(f))
    if cfg.hue > 0:
        shift = rng.uniform(-cfg.hue, cfg.hue)
        ops.append(lambda im, s=shift: shift_hue(im, s))
    rng.shuffle(ops)                             # torchvision applies the four in a random order
    for op in ops:
        image = op(image)
    return image


def augment(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """One random view of an RGB image, cfg.size square."""
    if not isinstance(image, Image.Image):
        raise InputError(f"augment takes a PIL image, got {type(image).__name__}")
    image = image.convert("RGB")
    left, top, w, h = random_resized_crop_box(image.width, image.height, cfg.scale, cfg.ratio, rng)
    image = image.resize((cfg.size, cfg.size), Image.BICUBIC, box=(left, top, left + w, top + h))
    if rng.random() < cfg.flip_p:
        image = ImageOps.mirror(image)
    if rng.random() < cfg.jitter_p:
        image = color_jitter(image, cfg, rng)
    if rng.random() < cfg.grayscale_p:
        image = image.convert("L").convert("RGB")
    if rng.random() < cfg.blur_p:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*cfg.blur_sigma)))
    return image


def two_views(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> tuple[Image.Image, Image.Image]:
    """Two independent views: a positive pair for instance discrimination."""
    return augment(image, cfg, rng), augment(image, cfg, rng)


__all__ = ["AugmentConfig", "augment", "two_views", "random_resized_crop_box", "color_jitter", "shift_hue"]
