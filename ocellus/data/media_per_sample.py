"""A batch's media split over its samples by the placeholders each sample's prompt holds (the Processor's
`images=` / `videos=`): one list per sample, any mismatch an InputError naming the sample. Images may come flat
(consumed in order) or one list per sample; videos only flat, since one video may itself be a list of frames."""
from __future__ import annotations

import os

from PIL import Image

from ocellus.data.video import Video
from ocellus.errors import InputError


def videos_per_sample(videos, counts: list[int]) -> list[list]:
    """A flat list of videos (transformers' `videos=`: a video may itself be a list of frames, so there is no
    per-sample nesting) split over the samples by their video placeholder counts."""
    if videos is None:
        videos = []
    elif isinstance(videos, (str, bytes, bytearray, os.PathLike, Video)):
        videos = [videos]
    elif not isinstance(videos, (list, tuple)):
        raise InputError(f"videos must be a list of videos (each a file, a directory, a list of frames or an "
                         f"array), got {type(videos).__name__}")
    if any(isinstance(v, Image.Image) for v in videos):
        raise InputError("videos holds PIL images: it is a list of videos, so wrap one video's frames in a list "
                         "(videos=[[frame0, frame1, ...]])")
    out, at = [], 0
    for b, n in enumerate(counts):
        if at + n > len(videos):
            raise InputError(f"sample {b}: {n} video placeholders but only {len(videos) - at} of the "
                             f"{len(videos)} videos are left for it ({sum(counts)} placeholders in all)")
        out.append(list(videos[at:at + n]))
        at += n
    if at != len(videos):
        raise InputError(f"{len(videos)} videos given but the samples have {sum(counts)} video placeholders "
                         f"({counts})")
    return out

def images_per_sample(images, counts: list[int]) -> list[list]:
    """Split `images` over the samples by their placeholder counts; any mismatch names the sample."""
    if images is None:
        images = []
    elif isinstance(images, (str, bytes, bytearray, os.PathLike, Image.Image)):
        images = [images]
    images = list(images)
    nested = bool(images) and all(isinstance(x, (list, tuple)) for x in images)
    if nested:
        if len(images) != len(counts):
            raise InputError(f"images has {len(images)} per-sample lists for {len(counts)} samples")
        for b, (srcs, n) in enumerate(zip(images, counts)):
            if len(srcs) != n:
                raise InputError(f"sample {b}: {n} image placeholders but {len(srcs)} images given")
        return [list(s) for s in images]
    out, at = [], 0
    for b, n in enumerate(counts):
        if at + n > len(images):
            raise InputError(f"sample {b}: {n} image placeholders but only {len(images) - at} of the "
                             f"{len(images)} images are left for it ({sum(counts)} placeholders in all)")
        out.append(images[at:at + n])
        at += n
    if at != len(images):
        raise InputError(f"{len(images)} images given but the samples have {sum(counts)} image placeholders "
                         f"({counts}); sample {len(counts) - 1} is the last to take images")
    return out


__all__ = ["images_per_sample", "videos_per_sample"]
