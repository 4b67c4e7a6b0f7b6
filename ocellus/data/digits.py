"""Handwritten digits as a real (not synthetic) image source, with no download.

scikit-learn ships the UCI "Optical Recognition of Handwritten Digits" test set inside its
wheel (`sklearn.datasets.load_digits`): 1,797 grey 8x8 images of the digits 0-9, pixel values
0..16 (16 = full ink). Here each becomes one visual question/answer sample in the normal
conversation form ("What digit is this?" -> "7"), so the tiny VLM recipes can check that an
image encoder learns something from real pixels, and accuracy is a string comparison.

Images: ink is drawn dark on a white background (as on paper; value v -> grey 255 - 255*v/16),
converted to RGB (vision towers take 3 channels) and upsampled from 8x8 to image_size with
nearest-neighbour resampling by default, which keeps every source pixel a sharp uniform block
(bilinear is available: resample="bilinear").

Split: a seeded permutation of all 1,797 indices (numpy.random.default_rng(seed)); the first
round(1797 * test_fraction) are the test split, the rest train. The same seed and fraction
always give the same disjoint split.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ocellus.data.messages import image_part, text_part
from ocellus.errors import ConfigError

QUESTION = "What digit is this?"
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ConfigError("the digits dataset comes from scikit-learn's bundled copy (no download): "
                          "pip install 'ocellus[digits]' (or pip install scikit-learn)") from e
    data = load_digits()
    return data.images, data.target  # [1797, 8, 8] float 0..16, [1797] int


def split_indices(n: int, split: str, seed: int, test_fraction: float) -> np.ndarray:
    """Indices of one split of range(n): a seeded permutation, test first."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    return order[:n_test] if split == "test" else order[n_test:]


def digit_image(pixels: np.ndarray, image_size: int = 32, resample: str = "nearest") -> Image.Image:
    """One 8x8 array of ink values 0..16 -> an RGB PIL image, dark ink on white, image_size square."""
    if resample not in _RESAMPLE:
        raise ConfigError(f"resample must be one of {', '.join(_RESAMPLE)}, got {resample!r}")
    grey = np.clip(255 - np.rint(pixels * (255 / 16)), 0, 255).astype(np.uint8)  # [8, 8]
    return Image.fromarray(grey).convert("RGB").resize((image_size, image_size), _RESAMPLE[resample])


def digits_samples(split: str = "train", seed: int = 0, image_size: int = 32, test_fraction: float = 0.2,
                   resample: str = "nearest", question: str = QUESTION) -> list[dict]:
    """One split of the digits as normal-form samples:

    {"id": "digits-<index>", "messages": [user: [image, "What digit is this?"], assistant: "7"],
     "images": [RGB PIL image_size x image_size], "type": "digit", "answer": "7", "label": 7,
     "index": <row in load_digits()>}"""
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an int >= 8 (the source images are 8x8), got {image_size!r}")
    images, targets = _load_digits()
    out = []
    for index in split_indices(len(images), split, seed, test_fraction):
        index, label = int(index), int(targets[index])
        messages = [{"role": "user", "content": [image_part(), text_part(question)]},
                    {"role": "assistant", "content": [text_part(str(label))]}]
        out.append({"id": f"digits-{index}", "messages": messages,
                    "images": [digit_image(images[index], image_size, resample)],
                    "type": "digit", "answer": str(label), "label": label, "index": index})
    return out
