"""LLaVA-OneVision (Li et al. 2024, "LLaVA-OneVision: Easy Visual Task Transfer"): LLaVA-NeXT's AnyRes (a global
view + the tiles of the best canvas, unpadded, a learned newline per feature row; llava_next/modeling.py) over a
SigLIP tower and a Qwen2 decoder, with `vision_aspect_ratio` "anyres_max_N": an unpadded tile grid holding more
than ~N tiles' features is bilinearly shrunk first (connectors/anyres.py, AnyresPacker.cap), and canvases of up
to 6 x 6 tiles.

Matches transformers' LlavaOnevisionForConditionalGeneration on images (tests/parity/test_llava_onevision_parity.py).
Not implemented, and refused by name rather than answered wrongly: videos (pixel_values_videos) and several
images in one sample (transformers gives each of those one padded square view, `batch_num_images`).
"""
from __future__ import annotations

import re

from ocellus.errors import ConfigError
from ocellus.models.families.llava_next.modeling import build_llava_next
from ocellus.models.vlm import VLM

MODEL_TYPES = ("llava_onevision",)
ARCHITECTURE = "LlavaOnevisionForConditionalGeneration"
# transformers' LlavaOnevisionConfig defaults for fields a config.json leaves out: 1 to 6 tiles of 384 a side
DEFAULT_GRID_PINPOINTS = [[384 * r, 384 * c] for r in range(1, 7) for c in range(1, 7)]
DEFAULTS = {"vision_feature_layer": -1, "vision_feature_select_strategy": "full", "image_token_index": 151646,
            "vision_aspect_ratio": "anyres_max_9"}
UNSUPPORTED = "see ocellus/models/families/llava_onevision/modeling.py"


def max_patches(vision_aspect_ratio) -> int:
    """'anyres_max_9' -> 9: the only form transformers' OneVision reads (anything else fails there too)."""
    found = re.fullmatch(r"anyres_max_(\d+)", str(vision_aspect_ratio))
    if found is None or int(found.group(1)) < 1:
        raise ConfigError(f"llava_onevision vision_aspect_ratio must be 'anyres_max_N' (N >= 1 tiles), got "
                          f"{vision_aspect_ratio!r}")
    return int(found.group(1))


class LlavaOnevision(VLM):
    """LLaVA-NeXT's VLM, its packer capped by anyres_max_N. Its own class so that the inputs OneVision takes and
    Ocellus does not compute are refused naming it (the decoder would otherwise ignore them silently)."""

    def forward(self, *args, pixel_values_videos=None, image_sizes_videos=None, batch_num_images=None, **kwargs):
        if pixel_values_videos is not None or image_sizes_videos is not None:
            raise ConfigError(f"llava_onevision: video input is not implemented in Ocellus; {UNSUPPORTED}")
        if batch_num_images is not None and any(int(n) > 1 for n in batch_num_images):
            raise ConfigError("llava_onevision: several images in one sample (batch_num_images "
                              f"{[int(n) for n in batch_num_images]}) take one padded square view each in "
                              f"transformers, which Ocellus does not implement; {UNSUPPORTED}")
        return super().forward(*args, **kwargs)


def with_defaults(cfg: dict) -> dict:
    """config.json with transformers' OneVision defaults for what it leaves out (SigLIP tower, Qwen2 text, 'full'
    features of the last layer, the 6 x 6 canvases, anyres_max_9): what the model and the processor both read."""
    # image_token_id is transformers' other name for image_token_index: the default stands in for neither
    defaults = {k: v for k, v in DEFAULTS.items() if not (k == "image_token_index" and "image_token_id" in cfg)}
    cfg = {**defaults, **cfg, "image_grid_pinpoints": cfg.get("image_grid_pinpoints") or DEFAULT_GRID_PINPOINTS}
    cfg["vision_config"] = {"model_type": "siglip_vision_model", **(cfg.get("vision_config") or {})}
    cfg["text_config"] = {"model_type": "qwen2", **(cfg.get("text_config") or {})}
    return cfg


def build_llava_onevision(cfg: dict) -> LlavaOnevision:
    """config.json dict -> LlavaOnevision: LLaVA-NeXT's build of with_defaults(cfg), with the cap."""
    cfg = with_defaults(cfg)
    model = build_llava_next(cfg, max_patches=max_patches(cfg["vision_aspect_ratio"]), cls=LlavaOnevision)
    model.family_name = "llava_onevision"   # VLM's families share classes: save picks this one by name
    return model
