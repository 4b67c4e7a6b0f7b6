"""Video input for Qwen2-VL-style models: frames sampled at a target fps, resized under a total
pixel budget, and cut into (2-frame x 14 x 14) patches (Wang et al. 2024, "Qwen2-VL", sec. 2.1:
a video is frames at 2 fps, two consecutive frames per temporal patch).

Frames come in decoded: a list of PIL images or a [T, H, W, 3] uint8 array / tensor (Ocellus
depends on no video-decoding library; decode with whatever you have, e.g. PyAV or imageio).

Sampling follows transformers' Qwen2VLVideoProcessor.sample_frames: n = total / video_fps * fps,
clamped to [min_frames, max_frames] and to the frames there are, rounded down to a multiple of the
temporal patch; frames at indices arange(0, total, total / n). The time one temporal patch spans,
`second_per_grid_ts` = temporal_patch / (n / duration), is what Qwen2.5-VL's absolute-time M-RoPE
ids scale with (nn/mrope.py); we use the effective rate kept / total * video_fps, as qwen-vl-utils
does (transformers' processor assumes the target fps was met).

The pixel budget: every frame is resized to the same smart_resize size, with at most
min(max_pixels, total_pixels / frames) pixels each, so a long video cannot flood the context
(qwen-vl-utils' VIDEO_TOTAL_PIXELS idea).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ocellus.data.image import ImageProcessorConfig, pil_to_tensor, rescale_normalize, resize
from ocellus.data.image_tiling import qwen2vl_num_tokens, qwen2vl_patchify, smart_resize
from ocellus.errors import ConfigError, InputError, positive_int


@dataclass(frozen=True)
class Video:
    """Decoded frames (RGB, all one size) and the source's frame rate (None when the source has no timing:
    a directory of frames, a list of frames). data/video_file.load_video makes one from a file."""
    frames: list[Image.Image]
    fps: float | None = None

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class VideoInputs:
    pixel_values_videos: torch.Tensor   # [t*h*w, C*T*p*p]
    video_grid_thw: tuple[int, int, int]
    second_per_grid_ts: float           # seconds one temporal patch spans
    frame_indices: tuple[int, ...]      # which input frames were kept


def as_frames(video, name: str = "video") -> list[Image.Image]:
    """A list of PIL images, or a [T, H, W, 3] uint8 array/tensor -> RGB PIL frames (at least one)."""
    if isinstance(video, torch.Tensor):
        video = video.cpu().numpy()
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            raise InputError(f"{name}: a frame array must be [T, H, W, 3], got shape {video.shape}")
        if video.dtype != np.uint8:
            raise InputError(f"{name}: frame arrays must be uint8 (0-255), got {video.dtype}")
        frames = [Image.fromarray(f) for f in video]
    elif isinstance(video, (list, tuple)):
        bad = [i for i, f in enumerate(video) if not isinstance(f, Image.Image)]
        if bad:
            raise InputError(f"{name}: frames {bad[:5]} are not PIL images")
        frames = [f.convert("RGB") if f.mode != "RGB" else f for f in video]
    else:
        raise InputError(f"{name}: expected a list of PIL frames or a [T, H, W, 3] array, got {type(video).__name__}")
    if not frames:
        raise InputError(f"{name} has zero frames")
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise InputError(f"{name}: frames have different sizes {sorted(sizes)[:4]}")
    return frames


def sample_indices(total: int, *, video_fps: float, fps: float = 2.0, min_frames: int = 4,
                   max_frames: int = 768, temporal_patch_size: int = 2) -> list[int]:
    """Indices of the frames kept when sampling `fps` frames per second of a `video_fps` video."""
    if total <= 0:
        raise InputError("the video has zero frames")
    if video_fps <= 0 or fps <= 0:
        raise InputError(f"video_fps ({video_fps}) and fps ({fps}) must be positive")
    cap = math.floor(min(max_frames, total) / temporal_patch_size) * temporal_patch_size
    n = min(max(total / video_fps * fps, min_frames), cap, total)
    n = math.floor(n / temporal_patch_size) * temporal_patch_size
    if n <= 0:  # fewer frames than one temporal patch: keep them all (patchify repeats the last)
        return list(range(total))
    return torch.arange(0, total, total / n).int().tolist()


def count_indices(total: int, num_frames: int, temporal_patch_size: int = 2, name: str = "video") -> list[int]:
    """Indices of the frames kept when sampling a fixed `num_frames` (transformers' Qwen2VLVideoProcessor: rounded to
    whole temporal patches, spread evenly over the video)."""
    n = round(num_frames / temporal_patch_size) * temporal_patch_size
    if n <= 0:
        raise ConfigError(f"video num_frames={num_frames} rounds to no whole temporal patch of "
                          f"{temporal_patch_size} frames; set num_frames >= {temporal_patch_size}")
    if n > total:
        raise InputError(f"{name}: num_frames={num_frames} samples {n} frames but the video has {total}; pass a "
                         f"longer video or lower num_frames")
    return torch.arange(0, total, total / n).int().tolist()


def preprocess_video(video, cfg: ImageProcessorConfig, *, video_fps: float | None = None, fps: float = 2.0,
                     min_frames: int = 4, max_frames: int = 768, total_pixels: int | None = None,
                     num_frames: int | None = None, cap_pixels_per_frame: bool = False,
                     max_video_tokens: int = 128000, frame_rate: float | None = None,
                     name: str = "video") -> VideoInputs:
    """Frames -> Qwen2-VL video patches. num_frames: keep that many (count_indices; video_fps None: the frames
    are one per 1/fps seconds). Else video_fps None: the frames are taken as already sampled (every frame kept,
    one frame per 1/frame_rate seconds, the frames' own rate when known, as transformers' sampled_fps; else 1/fps).
    cap_pixels_per_frame: transformers' total-video budget (see below)."""
    frames = as_frames(video, name)
    p, T, m = cfg.patch_size or 14, cfg.temporal_patch_size or 2, cfg.merge_size or 2
    if num_frames is not None:   # a fixed count wins over fps, as in transformers' sample_frames
        keep, video_fps = count_indices(len(frames), num_frames, T, name), video_fps or fps
    elif video_fps is None:
        keep, video_fps = list(range(len(frames))), frame_rate or fps
    else:
        keep = sample_indices(len(frames), video_fps=video_fps, fps=fps, min_frames=min_frames,
                              max_frames=max_frames, temporal_patch_size=T)
    total = len(frames)
    frames = [frames[i] for i in keep]
    min_px, max_px = cfg.min_pixels or 56 * 56, cfg.max_pixels or 28 * 28 * 1280
    if cap_pixels_per_frame:
        # transformers' (qwen-vl-utils') bound: each frame gets an even share of 90% of max_video_tokens' pixels
        # (a temporal patch of T frames is one token's worth), floored at 1.05 x min_pixels
        share = int(max_video_tokens * (p * m) ** 2 * 0.9) * T // len(frames)
        max_px = max(min(max_px, share), int(min_px * 1.05))
    if total_pixels is not None:
        max_px = min(max_px, total_pixels // len(frames))
        if max_px < min_px:
            raise InputError(f"{name}: {len(frames)} frames under total_pixels={total_pixels} leave {max_px} pixels "
                             f"a frame, below min_pixels={min_px}; sample fewer frames (fps/max_frames) or raise "
                             f"total_pixels")
    width, height = frames[0].size
    size = smart_resize(height, width, factor=p * m, min_pixels=min_px, max_pixels=max_px) if cfg.do_resize \
        else (height, width)
    pixels = torch.stack([rescale_normalize(pil_to_tensor(resize(f, size, cfg.resample) if cfg.do_resize else f), cfg)
                          for f in frames])                                       # [F, C, H, W]
    patches, grid = qwen2vl_patchify(pixels, p, T, m)
    # the frames kept span the whole input: the effective rate is kept / total * video_fps
    # (qwen-vl-utils'; equal to `fps` unless min/max_frames clamped the count)
    sample_fps = len(keep) / total * video_fps
    return VideoInputs(patches, grid, second_per_grid_ts=T / sample_fps, frame_indices=tuple(keep))


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a decoded video a processor keeps (transformers' Qwen2VLVideoProcessor fields, the same
    defaults): do_sample_frames False keeps every frame given; True samples `fps` frames a second of the
    video's own rate (Video.fps), between min_frames and max_frames, or a fixed num_frames when that is set
    (the video's rate then not needed). total_pixels caps frames x pixels after sampling (qwen-vl-utils' budget;
    None: only the per-frame max_pixels); cap_pixels_per_frame is transformers' own form of that budget, from
    max_video_tokens (preprocess_video)."""
    do_sample_frames: bool = False
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    total_pixels: int | None = None
    num_frames: int | None = None
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 128000

    def __post_init__(self):
        positive_int(self.num_frames, "video num_frames", optional=True)
        positive_int(self.max_video_tokens, "video max_video_tokens")
        positive_int(self.min_frames, "video min_frames")
        positive_int(self.max_frames, "video max_frames")
        positive_int(self.total_pixels, "video total_pixels", optional=True)
        positive_int(self.fps, "video fps", number=True)

    @classmethod
    def from_dict(cls, d: dict) -> "VideoSampling":
        """A video_preprocessor_config.json's sampling keys (absent keys keep transformers' defaults)."""
        keys = {"do_sample_frames": bool, "fps": float, "min_frames": int, "max_frames": int, "num_frames": int,
                "cap_pixels_per_frame": bool, "max_video_tokens": int}
        return cls(**{k: cast(d[k]) for k, cast in keys.items() if d.get(k) is not None})


@dataclass(frozen=True)
class VideoPatches:
    """Qwen2-VL's video path for Processor(video_inputs=...): each Video -> its kept frames (VideoSampling) ->
    patches (preprocess_video, cfg: the video processor's pixel budget, patch sizes, mean/std) -> the
    <|video_pad|> count t*h*w / merge^2. Returns pixel_values_videos [sum P, C*T*p*p], video_grid_thw [N, 3]
    and second_per_grid_ts [N] (Qwen2.5-VL's time ids read it; Qwen2-VL ignores it)."""
    cfg: ImageProcessorConfig
    sampling: VideoSampling = VideoSampling()

    def __call__(self, videos) -> tuple[dict[str, torch.Tensor], list[int]]:
        if not videos:
            raise InputError("no videos given")
        s, outs = self.sampling, []
        for i, video in enumerate(videos):
            if s.do_sample_frames and s.num_frames is None and video.fps is None:
                raise InputError(f"video {i}: this processor samples {s.fps:g} frames a second (do_sample_frames), "
                                 f"but the video has no frame rate (a list or directory of frames); pass "
                                 f"Video(frames, fps=...)")
            outs.append(preprocess_video(video.frames, self.cfg, video_fps=video.fps if s.do_sample_frames else None,
                                         fps=s.fps, min_frames=s.min_frames, max_frames=s.max_frames,
                                         total_pixels=s.total_pixels,
                                         num_frames=s.num_frames if s.do_sample_frames else None,
                                         cap_pixels_per_frame=s.cap_pixels_per_frame,
                                         max_video_tokens=s.max_video_tokens, frame_rate=video.fps,
                                         name=f"video {i}"))
        return ({"pixel_values_videos": torch.cat([o.pixel_values_videos for o in outs]),        # [sum P, D]
                 "video_grid_thw": torch.tensor([o.video_grid_thw for o in outs], dtype=torch.long),  # [N, 3]
                 "second_per_grid_ts": torch.tensor([o.second_per_grid_ts for o in outs])},         # [N]
                [qwen2vl_num_tokens(o.video_grid_thw, merge_size=self.cfg.merge_size or 2) for o in outs])
