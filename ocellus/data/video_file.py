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
`max_total_pixels`. Every refusal is an InputError naming the video, the limit and its value.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ocellus.data.image import DEFAULT_MAX_PIXELS, load_image
from ocellus.data.video import Video, as_frames
from ocellus.errors import InputError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
NEEDS_FFMPEG = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")


def load_video(src, *, name: str = "video", max_frames: int | None = None, max_total_pixels: int | None = None,
               max_frame_pixels: int | None = DEFAULT_MAX_PIXELS) -> Video:
    """Any accepted source (module docstring) -> Video, or InputError naming `name` and what is wrong."""
    if isinstance(src, Video):
        video = Video(as_frames(src.frames, name), src.fps)
    elif isinstance(src, (np.ndarray, torch.Tensor)):
        video = Video(as_frames(src, name))
    elif isinstance(src, (list, tuple)):
        if len(src) > (max_frames or len(src)):
            raise _too_many(name, max_frames)
        video = Video(as_frames([f if isinstance(f, Image.Image) else load_image(f, name=f"{name}, frame {i}",
                                                                                max_pixels=max_frame_pixels)
                                 for i, f in enumerate(src)], name))
    elif isinstance(src, (str, os.PathLike)) and not str(src).startswith("data:") and Path(src).is_dir():
        video = _directory(Path(src), name, max_frames, max_frame_pixels)
    elif isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        video = _animated(src, name, max_frames, max_total_pixels, max_frame_pixels)
    else:
        raise InputError(f"{name}: expected a video file (GIF / APNG / WebP), a directory of frames, a list of "
                         f"frames or a [T, H, W, 3] uint8 array, got {type(src).__name__}")
    check_limits(video, name, max_frames=max_frames, max_total_pixels=max_total_pixels,
                 max_frame_pixels=max_frame_pixels)
    return video


def check_limits(video: Video, name: str, *, max_frames: int | None = None, max_total_pixels: int | None = None,
                 max_frame_pixels: int | None = None) -> None:
    """The limits on frames already decoded (a list or array passed in), named as load_video names them."""
    if max_frames is not None and len(video) > max_frames:
        raise _too_many(name, max_frames, len(video))
    w, h = video.frames[0].size
    if max_frame_pixels is not None and w * h > max_frame_pixels:
        raise InputError(f"{name}: frames of {w}x{h} = {w * h:,} pixels are over the limit "
                         f"max_frame_pixels={max_frame_pixels:,}")
    if max_total_pixels is not None and len(video) * w * h > max_total_pixels:
        raise _too_big(name, len(video), w, h, max_total_pixels)


def _too_many(name: str, max_frames: int, n: int | None = None) -> InputError:
    have = f"{n} frames" if n is not None else "more frames"
    return InputError(f"{name}: {have} than the limit max_frames={max_frames}; send a shorter or sparser clip")


def _too_big(name: str, n: int, w: int, h: int, limit: int) -> InputError:
    return InputError(f"{name}: {n} frames of {w}x{h} are {n * w * h:,} pixels, over the limit "
                      f"max_total_pixels={limit:,}; send fewer or smaller frames")


def _directory(path: Path, name: str, max_frames: int | None, max_frame_pixels: int | None) -> Video:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{name} ({path}): the directory holds no frames ({', '.join(FRAME_SUFFIXES)})")
    if max_frames is not None and len(files) > max_frames:
        raise _too_many(name, max_frames, len(files))
    return Video(as_frames([load_image(f, name=f"{name}, frame {f.name}", max_pixels=max_frame_pixels)
                            for f in files], name))


def _animated(src, name: str, max_frames: int | None, max_total_pixels: int | None,
              max_frame_pixels: int | None) -> Video:
    """An animated image file (path, bytes or data URL): every frame, decoded one at a time under the limits."""
    label = f"{name} ({src})" if isinstance(src, (str, os.PathLike)) and not str(src).startswith("data:") else name
    if isinstance(src, (str, os.PathLike)) and Path(src).suffix.lower() in NEEDS_FFMPEG:
        raise InputError(f"{label}: {Path(src).suffix} needs an FFmpeg decoder, which Ocellus does not bundle; decode "
                         f"the frames (PyAV, decord, imageio) and pass them as a list of images or a [T, H, W, 3] "
                         f"array, or convert the clip to an animated GIF / WebP")
    if isinstance(src, str) and src.startswith("data:"):
        src = _data_url_bytes(src, label)
    fp = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src
    frames, durations = [], []
    try:
        with Image.open(fp) as img:  # the header only: size known, no pixel decoded yet
            w, h = img.size
            if max_frame_pixels is not None and w * h > max_frame_pixels:
                raise InputError(f"{label}: frames of {w}x{h} = {w * h:,} pixels are over the limit "
                                 f"max_frame_pixels={max_frame_pixels:,}")
            index = 0
            while True:
                if max_frames is not None and index >= max_frames + 1:
                    break
                try:
                    img.seek(index)
                except EOFError:
                    break
                if max_total_pixels is not None and (index + 1) * w * h > max_total_pixels:
                    raise _too_big(label, index + 1, w, h, max_total_pixels)
                img.load()   # decode this frame now, inside the try: a truncated file fails here
                frames.append(load_image(img, name=f"{label}, frame {index}", max_pixels=max_frame_pixels))
                durations.append(img.info.get("duration") or 0)
                index += 1
    except InputError:
        raise
    except FileNotFoundError as e:
        raise InputError(f"{label}: no such file") from e
    except Image.UnidentifiedImageError as e:
        raise InputError(f"{label}: not a video Pillow can read (animated GIF / APNG / WebP, or a directory of "
                         f"frames); decode other containers yourself and pass the frames") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{label}: cannot decode the video, the file is truncated or corrupt "
                         f"({type(e).__name__}: {e})") from e
    if max_frames is not None and len(frames) > max_frames:
        raise _too_many(label, max_frames)
    # the source's rate: Pillow gives each frame's display time in ms; a file without timing has none
    fps = 1000.0 * len(durations) / sum(durations) if all(d > 0 for d in durations) else None
    return Video(as_frames(frames, label), fps)


def _data_url_bytes(url: str, label: str) -> bytes:
    """data:image/gif;base64,... (or image/png, image/webp, video/*) -> the encoded bytes."""
    header, _, payload = url.partition(",")
    if not header.startswith(("data:image/", "data:video/")) or not header.endswith(";base64"):
        raise InputError(f"{label}: only base64 'data:image/...;base64,' or 'data:video/...;base64,' URLs are "
                         f"supported, got {header[:40]!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{label}: the data URL is not valid base64 ({e})") from e
