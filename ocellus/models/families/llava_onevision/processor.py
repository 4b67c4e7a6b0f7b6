"""LLaVA-OneVision's processor: LLaVA-NeXT's (llava/processor.py reads the directory and checks it; anyres views
of the tower's size, the same pixels as transformers' LlavaOnevisionImageProcessor for one image a sample), each
image counted with the anyres_max_N cap, as the model packs it. Several images in one sample (transformers: one
padded square view each) and videos are not implemented: a ConfigError naming the family."""
from __future__ import annotations

import functools
from pathlib import Path

from ocellus.data.image_tiling import tokens_per_image
from ocellus.data.processor import _read_json, Processor
from ocellus.errors import ConfigError
from ocellus.models.families.llava import processor as llava
from ocellus.models.families.llava_onevision.modeling import UNSUPPORTED, max_patches, with_defaults


class OnevisionProcessor(Processor):
    """Processor whose anyres image count is capped at max_patches tiles' worth (the model's AnyresPacker.cap)."""

    def __init__(self, *args, max_patches: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_patches = max_patches

    def image_inputs(self, images):
        tensors, _ = super().image_inputs(images)      # LLaVA-NeXT's views: pixel_values [N, V, 3, H, W], image_sizes
        p = self._patches
        counts = [tokens_per_image("anyres", image_size=(img.height, img.width), grid_pinpoints=p.grid_pinpoints,
                                   tile_size=p.tile_size, patch_size=p.patch_size, feature_select=p.feature_select,
                                   num_extra_tokens=p.num_extra_tokens, max_patches=self.max_patches)
                  for img in images]
        return tensors, counts

    def __call__(self, messages=None, images=None, *, videos=None, **kwargs):
        if videos is not None or _has_video_part(messages):
            raise ConfigError(f"llava_onevision: video input is not implemented in Ocellus; {UNSUPPORTED}")
        out = super().__call__(messages, images, **kwargs)
        # every sample holding images must hold exactly one: then the rows with image tokens are as many as images
        if "image_sizes" in out and len(out["image_sizes"]) != int((out["input_ids"] == self.image_token_id)
                                                                    .any(-1).sum()):
            raise ConfigError("llava_onevision: several images in one sample take one padded square view each in "
                              f"transformers, which Ocellus does not implement; {UNSUPPORTED}")
        return out


def _has_video_part(messages) -> bool:
    """Whether any message part (of one conversation or a batch of them) is {"type": "video"}."""
    if isinstance(messages, dict):
        return messages.get("type") == "video" or _has_video_part(messages.get("content"))
    return isinstance(messages, (list, tuple)) and any(_has_video_part(m) for m in messages)


def processor_from_dir(directory) -> OnevisionProcessor:
    """A LLaVA-OneVision checkpoint directory -> its processor. The cap is config.json's vision_aspect_ratio;
    processor_config.json's (transformers' processor counts with its own) must agree."""
    cfg = with_defaults(_read_json(Path(directory) / "config.json") or {})
    cap = max_patches(cfg["vision_aspect_ratio"])
    proc_cfg = _read_json(Path(directory) / "processor_config.json") or {}
    said = proc_cfg.get("vision_aspect_ratio")
    if said is not None and max_patches(said) != cap:
        raise ConfigError(f"{directory}: processor_config.json has vision_aspect_ratio {said!r} but config.json "
                          f"{cfg['vision_aspect_ratio']!r}; the processor would count other token numbers than "
                          f"the model packs")
    counted = llava.count_from_config(cfg, Path(directory))
    per_tile = (counted["tile_size"] // counted["patch_size"]) ** 2   # transformers' processor counts with this
    said = proc_cfg.get("num_image_tokens")
    if said is not None and said != per_tile:
        raise ConfigError(f"{directory}: processor_config.json has num_image_tokens {said!r} but config.json's "
                          f"tower makes {per_tile} a tile; transformers' processor would count other token "
                          f"numbers than the model packs")
    return llava.processor_from_dir(directory, make=functools.partial(OnevisionProcessor, max_patches=cap),
                                    defaults=with_defaults)


def training_processor(model, tok, image_config) -> OnevisionProcessor:
    """LLaVA-NeXT's training processor with the model's cap (for a OneVision model fine-tuned by a recipe)."""
    return llava.training_processor(model, tok, image_config,
                                    make=functools.partial(OnevisionProcessor, max_patches=model.packer.max_patches))
