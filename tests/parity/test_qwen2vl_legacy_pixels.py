"""A Qwen2-VL preprocessor_config.json holding both `size` and the legacy top-level min_pixels / max_pixels:
the legacy keys win, as transformers' Qwen2VLImageProcessor reads them (its "backward compatibility" override),
so the pixel budget -- and with it every image's grid and token count -- equals the reference's."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Qwen2VLImageProcessorPil  # noqa: E402

from ocellus.data.image import ImageProcessorConfig  # noqa: E402
from ocellus.data.image_tiling import preprocess_qwen2vl  # noqa: E402
from PIL import Image  # noqa: E402

CONFIG = {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "temporal_patch_size": 2,
          "merge_size": 2, "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
          "min_pixels": 112 * 112, "max_pixels": 28 * 28 * 64}


def test_legacy_min_and_max_pixels_override_size_as_in_transformers():
    # deep copies: transformers writes the legacy values into the `size` dict it is given
    cfg = ImageProcessorConfig.from_dict(copy.deepcopy(CONFIG))
    ref = Qwen2VLImageProcessorPil.from_dict(copy.deepcopy(CONFIG))
    assert (cfg.min_pixels, cfg.max_pixels) == (ref.size["shortest_edge"], ref.size["longest_edge"])
    assert (cfg.min_pixels, cfg.max_pixels) == (112 * 112, 28 * 28 * 64)
    # a small image is scaled up to the legacy min_pixels, a large one down to the legacy max_pixels
    images = [Image.new("RGB", (40, 30), (10, 20, 30)), Image.new("RGB", (900, 700), (200, 100, 0))]
    _, grid = preprocess_qwen2vl(images, cfg)
    assert torch.equal(grid, ref(images, return_tensors="pt")["image_grid_thw"])
