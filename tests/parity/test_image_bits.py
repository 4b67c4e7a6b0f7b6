"""CLIP / SigLIP preprocessing is bit-identical to transformers' Pillow backend, not merely within 1e-6:
an image holding every uint8 value once per channel goes through rescale (float64, cast once to float32) and
normalisation (float32), and every output float is compared with atol=0. A float32 rescale differs in the
last bit for about half of the 256 values, which a tolerance of 1e-6 cannot see."""
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil  # noqa: E402

from ocellus.data.image import ImageProcessorConfig, preprocess  # noqa: E402
from PIL import Image  # noqa: E402

BITS = dict(rtol=0, atol=0)


def every_value_image() -> Image.Image:
    """16 x 16 x 3: channel c holds the values 0..255 rolled by 85 * c, so each channel sees all 256."""
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return Image.fromarray(np.stack([np.roll(v, 85 * c) for c in range(3)], axis=-1))


@pytest.mark.parametrize("kwargs", [{"do_normalize": False}, {}])
def test_clip_pixels_are_bit_identical(kwargs, tmp_path):
    # no resize, no crop: the uint8 values reach the arithmetic unchanged
    ref = CLIPImageProcessorPil(do_resize=False, do_center_crop=False, **kwargs)
    ref.save_pretrained(tmp_path)
    cfg = ImageProcessorConfig.from_dir(tmp_path)
    img = every_value_image()
    torch.testing.assert_close(preprocess([img], cfg), ref(img, return_tensors="pt")["pixel_values"], **BITS)


def test_siglip_pixels_are_bit_identical(tmp_path):
    ref = SiglipImageProcessorPil(size={"height": 16, "width": 16})
    ref.save_pretrained(tmp_path)
    cfg = ImageProcessorConfig.from_dir(tmp_path)
    img = every_value_image()
    torch.testing.assert_close(preprocess([img], cfg), ref(img, return_tensors="pt")["pixel_values"], **BITS)
