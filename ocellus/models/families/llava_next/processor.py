"""LLaVA-NeXT's processor side: its processor is LLaVA's (llava/processor.py, with the packer's canvases);
what is its own is the preprocessor_config.json an export writes (the registry's `export` piece)."""
from __future__ import annotations

import json
from pathlib import Path

from ocellus.models.vlm import VLM


def export_processor(model: VLM, tok, image_config, path) -> None:
    """preprocessor_config.json as transformers' LlavaNextImageProcessor reads it: the recipe's global-view
    size and mean/std, tiles of the tower's size (crop_size), the model's canvases."""
    h, w = image_config.size_hw
    tile = model.packer.tile_size
    config = {"image_processor_type": "LlavaNextImageProcessor", "do_resize": True, "size": {"height": h, "width": w},
              "crop_size": {"height": tile, "width": tile}, "do_center_crop": False,
              "image_grid_pinpoints": [list(p) for p in model.packer.grid_pinpoints],
              "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": list(image_config.image_mean), "image_std": list(image_config.image_std),
              "resample": int(image_config.resample)}
    (Path(path) / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
