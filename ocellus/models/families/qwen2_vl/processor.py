"""Qwen2-VL's processor (Qwen2.5-VL's too): dynamic resolution (each image smart-resized within a pixel budget,
patchified, t*h*w / merge^2 <|image_pad|> tokens) and videos beside images (<|video_pad|> runs, sampled as
data/video.py does); export_processor writes what transformers' Qwen2VLImageProcessor / VideoProcessor read."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ocellus.data.bpe import CHATML
from ocellus.data.image import ImageProcessorConfig
from ocellus.data.image_tiling import preprocess_qwen2vl, qwen2vl_num_tokens
from ocellus.data.processor import Processor, image_processor_dict, video_processor_dict
from ocellus.data.tokenizer import Tokenizer
from ocellus.data.video import VideoPatches, VideoSampling, preprocess_video
from ocellus.errors import ConfigError, InputError
from ocellus.hub.checkpoint import read_config
from ocellus.models.families.qwen2_vl.modeling import IMAGE_PAD, VIDEO_PAD, Qwen2VL, _variant, token_ids
from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig


@dataclass(frozen=True)
class Qwen2VLImages:
    """Qwen2-VL's image path for Processor(image_inputs=...): dynamic resolution. Each image is
    smart-resized to multiples of patch*merge within [min_pixels, max_pixels] (cfg), patchified, and
    becomes t*h*w / merge^2 placeholder tokens. Images smaller than min_pixels are refused unless
    upscale_small (then smart_resize enlarges them, as transformers' processor does silently)."""
    cfg: object          # ImageProcessorConfig with min/max_pixels, patch_size, temporal_patch_size, merge_size
    upscale_small: bool = False

    def __call__(self, images) -> tuple[dict[str, torch.Tensor], list[int]]:
        min_px = self.cfg.min_pixels
        for i, img in enumerate(images):
            if not self.upscale_small and img.width * img.height < min_px:
                raise InputError(f"image {i} is {img.width}x{img.height} = {img.width * img.height} pixels, below "
                                 f"min_pixels={min_px}; pass a larger image (or build the processor with "
                                 f"upscale_small=True to let smart_resize enlarge it)")
        pixel_values, grid_thw = preprocess_qwen2vl(images, self.cfg, max_pixels=None)  # [sum P, D], [N, 3]
        counts = [qwen2vl_num_tokens(g, merge_size=self.cfg.merge_size) for g in grid_thw.tolist()]
        return {"pixel_values": pixel_values, "image_grid_thw": grid_thw}, counts

    def videos(self, videos, *, video_fps=None, fps: float = 2.0, total_pixels: int | None = None,
               max_frames: int = 768) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Videos (PIL frame lists or [T, H, W, 3] arrays; data/video.py) -> pixel_values_videos,
        video_grid_thw, second_per_grid_ts, and the <|video_pad|> count of each video."""
        fps_list = video_fps if isinstance(video_fps, (list, tuple)) else [video_fps] * len(videos)
        outs = [preprocess_video(v, self.cfg, video_fps=f, fps=fps, total_pixels=total_pixels, max_frames=max_frames,
                                 name=f"video {i}") for i, (v, f) in enumerate(zip(videos, fps_list))]
        if not outs:
            raise InputError("no videos given")
        return ({"pixel_values_videos": torch.cat([o.pixel_values_videos for o in outs]),
                 "video_grid_thw": torch.tensor([o.video_grid_thw for o in outs], dtype=torch.long),
                 "second_per_grid_ts": torch.tensor([o.second_per_grid_ts for o in outs])},
                [qwen2vl_num_tokens(o.video_grid_thw, merge_size=self.cfg.merge_size) for o in outs])


def _image_config(image_config, vision: Qwen2VisionConfig, min_pixels: int | None = None,
                  max_pixels: int | None = None):
    factor = vision.patch_size * vision.spatial_merge_size
    if max_pixels is None:
        max_pixels = image_config.max_pixels or (image_config.size_hw[0] * image_config.size_hw[1]
                                                 if image_config.size_hw else 28 * 28 * 1280)
    min_pixels = min_pixels or image_config.min_pixels or factor * factor
    if max_pixels < factor * factor:
        raise ConfigError(f"max_pixels={max_pixels} is below one merged patch ({factor}x{factor})")
    # size_hw is not used to resize (smart_resize is): it records the largest square the budget takes,
    # the scene size the eval harness renders for a dynamic-resolution model
    side = math.isqrt(int(max_pixels)) // factor * factor
    # do_resize stays the file's: off, transformers patchifies the image as it is (a multiple of patch * merge)
    return replace(image_config, size_hw=(side, side), shortest_edge=None, min_pixels=int(min_pixels),
                   max_pixels=int(max_pixels), patch_size=vision.patch_size,
                   temporal_patch_size=vision.temporal_patch_size, merge_size=vision.spatial_merge_size,
                   processor_type="Qwen2VLImageProcessor")


def _image_token(tok, image_id: int) -> str:
    """<|image_pad|> when the tokenizer has it; else the token whose id the model splices at (the tiny
    recipes' BPE tokenizer has no Qwen tokens: its <image> serves as the image pad)."""
    name = IMAGE_PAD if tok.convert_tokens_to_ids(IMAGE_PAD) is not None else tok.convert_ids_to_tokens(image_id)
    if name is None:
        raise ConfigError(f"the model splices images at id {image_id} (image_token_id), which the tokenizer does not have")
    if tok.convert_tokens_to_ids(name) != image_id:
        raise ConfigError(f"the tokenizer's {name!r} has id {tok.convert_tokens_to_ids(name)}, but the model "
                          f"splices images at id {image_id} (image_token_id)")
    return name


def _video_token(tok, video_id: int) -> str:
    """<|video_pad|> when the tokenizer has it with the model's id; else the token at the model's video_token_id
    (a tiny recipe's `model.video_token`)."""
    name = VIDEO_PAD if tok.convert_tokens_to_ids(VIDEO_PAD) == video_id else tok.convert_ids_to_tokens(video_id)
    if name is None:
        raise ConfigError(f"the model's video_token_id {video_id} is not in the tokenizer")
    return name


def _video_template(tok, image_token: str, video_token: str) -> str | None:
    """The tiny recipes' ChatML (data/bpe.py) writes image parts only; a video model gets the same template
    with video parts written as its video token (None: keep the tokenizer's template, e.g. Qwen2-VL's own,
    which writes <|vision_start|><|video_pad|><|vision_end|>)."""
    if tok.chat_template != CHATML or image_token != "<image>":
        return None
    return CHATML.replace("{% elif part['type'] == 'text' %}",
                          "{% elif part['type'] == 'video' %}{{ '" + video_token + "' }}"
                          "{% elif part['type'] == 'text' %}")


def _video_kwargs(tok, video_id: int | None, image_token: str, video_cfg, sampling: VideoSampling) -> dict:
    """Processor keywords for the video path: the video token, its VideoPatches and, for the tiny ChatML, the
    template that writes it; {} for a model without a video token."""
    if video_id is None:
        return {}
    token = _video_token(tok, int(video_id))
    kw = {"video_token": token, "video_inputs": VideoPatches(video_cfg, sampling)}
    template = _video_template(tok, image_token, token)
    return {**kw, "chat_template": template} if template else kw


def training_processor(model: Qwen2VL, tok, image_config, upscale_small: bool = False):
    """The recipe's processor: the pixel budget is the recipe's image_size^2 (image_config's size), each video
    frame's too (every frame given is kept: the recipe's videos are already sampled)."""
    vision = model.visual.config
    icfg = _image_config(image_config, vision)
    image_token = _image_token(tok, model.tokens.image)
    return Processor(tok, icfg, patch_size=vision.patch_size, image_token=image_token,
                     image_inputs=Qwen2VLImages(icfg, upscale_small),
                     **_video_kwargs(tok, model.tokens.video, image_token, icfg, VideoSampling()))


def processor_from_dir(directory, upscale_small: bool = False):
    """A checkpoint dir: config.json (patch sizes, image_token_id) + preprocessor_config.json (Qwen2-VL's
    pixel budget, mean/std) + tokenizer files."""
    directory = Path(directory)
    cfg = read_config(directory)
    vision = Qwen2VisionConfig.from_hf(cfg.get("vision_config") or {}, _variant(cfg))
    pre = image_processor_dict(directory)
    if pre is None:
        raise ConfigError(f"{directory}: no preprocessor_config.json (Qwen2VLImageProcessor settings)")
    pre = {**pre, "image_processor_type": pre.get("image_processor_type") or "Qwen2VLImageProcessor"}
    icfg = ImageProcessorConfig.from_dict(pre)
    for key, model_value in (("patch_size", vision.patch_size), ("temporal_patch_size", vision.temporal_patch_size),
                             ("merge_size", vision.spatial_merge_size)):
        if getattr(icfg, key) is not None and getattr(icfg, key) != model_value:
            raise ConfigError(f"{directory}: preprocessor_config.json has {key}={getattr(icfg, key)} but the vision "
                              f"tower's config.json says {model_value}")
    icfg = _image_config(icfg, vision, icfg.min_pixels, icfg.max_pixels)
    tok = Tokenizer.from_dir(directory)
    ids = token_ids(cfg)   # transformers' defaults for ids config.json leaves out
    image_token = _image_token(tok, ids.image)
    video_id = ids.video
    if "video_token_id" not in cfg and video_id is not None and tok.convert_ids_to_tokens(video_id) is None:
        video_id = None    # the default id, not in this tokenizer: no video path (a videos= call is refused)
    # videos: video_preprocessor_config.json (or processor_config.json's video_processor section, transformers 5),
    # else the image processor's numbers, as transformers' AutoVideoProcessor falls back to them
    video = video_processor_dict(directory) or pre
    vcfg = ImageProcessorConfig.from_dict({**video, "image_processor_type": "Qwen2VLImageProcessor"})
    vcfg = _image_config(vcfg, vision, vcfg.min_pixels, vcfg.max_pixels)
    return Processor(tok, icfg, patch_size=vision.patch_size, image_token=image_token,
                     image_inputs=Qwen2VLImages(icfg, upscale_small),
                     **_video_kwargs(tok, video_id, image_token, vcfg, VideoSampling.from_dict(video)))


def export_processor(model: Qwen2VL, tok, image_config, path) -> None:
    """preprocessor_config.json as transformers' Qwen2VLImageProcessor reads it (+ video_preprocessor_config.json,
    the same numbers and transformers' sampling defaults, for a model with a video token)."""
    icfg = _image_config(image_config, model.visual.config)
    names = [("preprocessor_config.json", "image_processor_type", "Qwen2VLImageProcessor")]
    if model.tokens.video is not None:
        names.append(("video_preprocessor_config.json", "video_processor_type", "Qwen2VLVideoProcessor"))
    for name, key, kind in names:
        sampling = {"do_sample_frames": False, "fps": 2.0, "min_frames": 4, "max_frames": 768} if "video" in key else {}
        (Path(path) / name).write_text(json.dumps({**_processor_numbers(icfg), key: kind, **sampling}, indent=2))


def _processor_numbers(icfg) -> dict:
    return {"do_resize": True, "size": {"shortest_edge": icfg.min_pixels, "longest_edge": icfg.max_pixels},
            "min_pixels": icfg.min_pixels, "max_pixels": icfg.max_pixels, "patch_size": icfg.patch_size,
            "temporal_patch_size": icfg.temporal_patch_size, "merge_size": icfg.merge_size, "do_rescale": True,
            "rescale_factor": icfg.rescale_factor, "do_normalize": True, "image_mean": list(icfg.image_mean),
            "image_std": list(icfg.image_std), "resample": icfg.resample}
