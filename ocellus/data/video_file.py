"""Video sources -> checked RGB frames and their frame rate, decoded with Pillow alone.

    video = load_video("clip.gif", max_frames=64)        # Video(frames=[PIL.Image, ...], fps=2.0)

What decodes here, without a new dependency:
- animated GIF, APNG and animated WebP files (a path, raw bytes or a `data:image/gif;base64,...` URL):
  Pillow reads every frame and its duration, so the frame rate is known (1000 / mean duration in ms);
- a directory of still frames (PNG / JPEG / WebP / GIF / BMP), in file-name order; no frame rate;
- frames already decoded: a list of PIL images or paths, or a [T, H, W, 3] uint8 array (data/video.py).

MP4 / WebM / MKV need an FFmpeg decoder (PyAV, decord, imageio-ffmpeg): tens of MB of native code for
one input path, so Ocellus leaves it to the caller: decode with one and pass the frames (a list or array).
A file Pillow cannot open is an InputError saying so.

Limits are checked before pixels are decoded where the format allows: each frame's size comes from
the header (`max_frame_pixels`, the same decompression-bomb guard as images), frames are counted as
they are read and reading stops at `max_frames + 1`, and frames x width x height is held under
`max_total_pixels`. Every refusal is an InputError naming the video, the limit and its value; `names` renames
the limits in those messages (the server names its flags: {"max_frames": "--max-video-frames", ...}).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ocellus.data.data_url import data_url_bytes
from ocellus.data.image import DEFAULT_MAX_PIXELS, load_image
from ocellus.data.video import Video, as_frames
from ocellus.errors import InputError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
NEEDS_FFMPEG = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")


def load_video(src, *, name: str = "video", max_frames: int | None = None, max_total_pixels: int | None = None,
               max_frame_pixels: int | None = DEFAULT_MAX_PIXELS, names: dict[str, str] | None = None) -> Video:
    """Any accepted source (module docstring) -> Video, or InputError naming `name` and what is wrong."""
    limits = _Limits(max_frames, max_total_pixels, max_frame_pixels, {**LIMIT_NAMES, **(names or {})})
    if isinstance(src, Video):
        video = Video(as_frames(src.frames, name), src.fps)
    elif isinstance(src, (np.ndarray, torch.Tensor)):
        video = Video(as_frames(src, name))
    elif isinstance(src, (list, tuple)):
        limits.check_count(name, len(src))
        video = Video(as_frames([f if isinstance(f, Image.Image) else load_image(f, name=f"{name}, frame {i}",
                                                                                max_pixels=max_frame_pixels)
                                 for i, f in enumerate(src)], name))
    elif isinstance(src, (str, os.PathLike)) and not str(src).startswith("data:") and Path(src).is_dir():
        video = _directory(Path(src), name, limits)
    elif isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        video = _animated(src, name, limits)
    else:
        raise InputError(f"{name}: expected a video file (GIF / APNG / WebP), a directory of frames, a list of "
                         f"frames or a [T, H, W, 3] uint8 array, got {type(src).__name__}")
    limits.check_count(name, len(video))
    w, h = video.frames[0].size
    limits.check_frame(name, w, h)
    limits.check_total(name, len(video), w, h)
    return video


LIMIT_NAMES = {"max_frames": "max_frames", "max_total_pixels": "max_total_pixels",
               "max_frame_pixels": "max_frame_pixels"}


@dataclass(frozen=True)
class _Limits:
    """load_video's limits and how its messages call them."""
    max_frames: int | None
    max_total_pixels: int | None
    max_frame_pixels: int | None
    names: dict

    def check_count(self, name: str, n: int) -> None:
        """n frames (or more: a decoder stops reading at max_frames + 1) against max_frames."""
        if self.max_frames is not None and n > self.max_frames:
            raise InputError(f"{name}: more than {self.max_frames} frames, over the limit "
                             f"{self.names['max_frames']}={self.max_frames}; send a shorter or sparser clip")

    def check_frame(self, name: str, w: int, h: int) -> None:
        if self.max_frame_pixels is not None and w * h > self.max_frame_pixels:
            raise InputError(f"{name}: frames of {w}x{h} = {w * h:,} pixels are over the limit "
                             f"{self.names['max_frame_pixels']}={self.max_frame_pixels:,}")

    def check_total(self, name: str, n: int, w: int, h: int) -> None:
        if self.max_total_pixels is not None and n * w * h > self.max_total_pixels:
            raise InputError(f"{name}: {n} frames of {w}x{h} are {n * w * h:,} pixels, over the limit "
                             f"{self.names['max_total_pixels']}={self.max_total_pixels:,}; send fewer or smaller "
                             f"frames")


def _directory(path: Path, name: str, limits: _Limits) -> Video:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{name} ({path}): the directory holds no frames ({', '.join(FRAME_SUFFIXES)})")
    limits.check_count(name, len(files))
    return Video(as_frames([load_image(f, name=f"{name}, frame {f.name}", max_pixels=limits.max_frame_pixels)
                            for f in files], name))


def _animated(src, name: str, limits: _Limits) -> Video:
    """An animated image file (path, bytes or data URL): every frame, decoded one at a time under the limits."""
    label = f"{name} ({src})" if isinstance(src, (str, os.PathLike)) and not str(src).startswith("data:") else name
    if isinstance(src, (str, os.PathLike)) and Path(src).suffix.lower() in NEEDS_FFMPEG:
        raise InputError(f"{label}: {Path(src).suffix} needs an FFmpeg decoder, which Ocellus does not bundle; decode "
                         f"the frames (PyAV, decord, imageio) and pass them as a list of images or a [T, H, W, 3] "
                         f"array, or convert the clip to an animated GIF / WebP")
    if isinstance(src, str) and src.startswith("data:"):
        src = data_url_bytes(src, label, ("image/", "video/"), "only base64 'data:image/...;base64,' or "
                                                               "'data:video/...;base64,' URLs are supported")
    fp = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src
    frames, durations = [], []
    try:
        with Image.open(fp) as img:  # the header only: size known, no pixel decoded yet
            w, h = img.size
            limits.check_frame(label, w, h)
            index = 0
            while True:
                try:
                    img.seek(index)
                except EOFError:
                    break
                limits.check_count(label, index + 1)   # frame max_frames + 1 exists: stop before decoding it
                limits.check_total(label, index + 1, w, h)   # before this frame's pixels are decoded
                img.load()   # decode this frame now, inside the try: a truncated file fails here
                frames.append(load_image(img, name=f"{label}, frame {index}", max_pixels=limits.max_frame_pixels))
                durations.append(img.info.get("duration") or 0)
                index += 1
    except InputError:
        raise
    except FileNotFoundError as e:
        raise InputError(f"{label}: no such file") from e
    except Image.UnidentifiedImageError as e:
        raise InputError(f"{label}: not a video Pillow can read (animated GIF / APNG / WebP, or a directory of "
                         f"frames); decode other containers yourself and pass the frames") from e
    except (OSError, ValueError, SyntaxError, IndexError, TypeError, Image.DecompressionBombError) as e:
        # what Pillow raises on a truncated or corrupt frame (a cut GIF fails its seek with IndexError)
        raise InputError(f"{label}: cannot decode the video, the file is truncated or corrupt "
                         f"({type(e).__name__}: {e})") from e
    # the source's rate: Pillow gives each frame's display time in ms; a file without timing has none
    fps = 1000.0 * len(durations) / sum(durations) if all(d > 0 for d in durations) else None
    return Video(as_frames(frames, label), fps)


