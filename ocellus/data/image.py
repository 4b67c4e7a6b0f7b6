"""Images in: loading, validation and CLIP/SigLIP-style preprocessing (Pillow + torch, no torchvision).

Two jobs live here:

1. `load_image` turns a path, raw bytes, a `data:image/...;base64,` URL or a PIL image into an RGB
   PIL image, or raises `InputError` naming the image and the problem. What is converted and how:
     - EXIF orientation is applied (as transformers' `load_image` does), so phone photos stand up.
     - alpha (RGBA, LA, PA, P with a transparent colour, ...) is composited onto WHITE, as
       transformers' `convert_to_rgb` does; the colour under fully transparent pixels never leaks.
     - CMYK, L, 1, P, YCbCr, ... go through Pillow's `convert("RGB")` (no ICC colour management).
     - 16-bit grey (I;16*, and I holding 16-bit data) is scaled to 8 bits with x * 255 / 65535,
       rounded -- Pillow's own `convert` would clip everything above 255 to white.
     - animated files (GIF, APNG, WebP) give their FIRST frame; a PIL image the frame it is on.
     - float images (mode F) are refused: their value range is not defined.
     - size is checked from the header, BEFORE any pixel is decoded, against `max_pixels`
       (decompression-bomb guard); 0-pixel and truncated/corrupt files are refused.

2. `preprocess(images, cfg)` produces `pixel_values [N, 3, H, W]` equal to transformers 5.x
   `CLIPImageProcessor` / `SiglipImageProcessor` (their Pillow backend, `PilBackend` in
   transformers/image_processing_backends.py) on the same images:
       Pillow resize (shortest edge, or fixed (H, W)) -> center crop -> x * rescale_factor
       (in float64, then float32) -> (x - mean) / std in float32.
   Resizing is done by Pillow on uint8 images, exactly as the reference does, so the outputs are
   bit-identical, not merely close. `ImageProcessorConfig` reads `preprocessor_config.json`.
   `preprocess(..., pad_to_square=True)` is LLaVA-1.5's `image_aspect_ratio="pad"`: the image is
   first expanded to a square filled with the mean colour (`expand2square` in LLaVA's
   llava/mm_utils.py, Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning").

The multi-crop strategies (LLaVA-NeXT anyres, InternVL-1.5 dynamic tiling, Qwen2-VL smart resize)
and `tokens_per_image`, the one function both processor and model use to count image tokens, are
in `ocellus/data/image_tiling.py`.
"""

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ocellus.data.data_url import data_url_bytes
from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.hub.checkpoint_dir import read_json_object

# Pillow refuses to open images over 2 * PIL.Image.MAX_IMAGE_PIXELS (= 178,956,970 by default);
# we refuse at the same size by default, but with a message that names the image and the knob.
DEFAULT_MAX_PIXELS = 178_956_970

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)   # SigLIP
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # InternVL
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# What Pillow's decoders raise on broken data: truncated streams (OSError), bad chunks
# (SyntaxError), short reads (EOFError), impossible header values (ValueError, IndexError,
# TypeError from plugin internals). All become InputError naming the image, with the cause chained.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError)


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------

def load_image(src, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load one image as an RGB PIL image, or raise `InputError` saying which image and why.

    src: a path (str / os.PathLike), raw encoded bytes (bytes / bytearray / memoryview), a
         `data:image/...;base64,...` string, or a `PIL.Image.Image`.
    name: how error messages call the image (e.g. "image 3"); a path is always added.
    max_pixels: refuse images with more than this many pixels (width * height), checked on the
         header before decoding. None disables our check; Pillow's own guard
         (2 * PIL.Image.MAX_IMAGE_PIXELS) still applies to encoded sources.

    Alpha is composited on white, 16-bit grey is scaled (not clipped) to 8 bits, animated files
    give their first frame (a PIL image keeps the frame it is on: seeking was the caller's choice),
    EXIF orientation is applied (see the module docstring).
    """
    label = _label(src, name)
    if isinstance(src, Image.Image):
        _check_size(src.size, label, max_pixels)
        try:
            return _to_rgb(src, label)
        except InputError:
            raise
        except _DECODE_ERRORS as e:  # a lazily opened PIL image can still fail to decode here
            raise InputError(f"{label}: cannot decode the image ({type(e).__name__}: {e})") from e
    fp = _open_source(src, label)
    try:
        with Image.open(fp) as img:  # reads the header only: size and mode are known, pixels are not
            _check_size(img.size, label, max_pixels)
            img.seek(0)  # animated: first frame
            img.load()   # decode now, so truncated/corrupt files fail here, inside the try
            return _to_rgb(img, label)  # a new image: it survives the `with` closing the file
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"{label}: refused as a possible decompression bomb by Pillow ({e}); raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS if you trust this image") from e
    except FileNotFoundError as e:
        raise InputError(f"{label}: no such file") from e
    except Image.UnidentifiedImageError as e:
        raise InputError(f"{label}: not an image Pillow can read (unknown format or corrupt header)") from e
    except _DECODE_ERRORS as e:
        raise InputError(f"{label}: cannot decode the image, the file is truncated or corrupt "
                         f"({type(e).__name__}: {e})") from e
    finally:
        if fp is not src:  # a BytesIO we made; Image.open closes files it opened from a path itself
            fp.close()


def load_images(srcs, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    """`load_image` on each item; error messages say "image i" (0-based) and the path if any."""
    if isinstance(srcs, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)):
        srcs = [srcs]
    return [load_image(s, name=f"image {i}", max_pixels=max_pixels) for i, s in enumerate(srcs)]


def _label(src, name: str | None) -> str:
    if isinstance(src, (str, os.PathLike)) and not str(src).startswith("data:"):
        return f"{name} ({src})" if name else f"image {str(src)!r}"
    return name or "image"


def _open_source(src, label: str):
    """A path or a binary file object for Image.open."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(src))
    if isinstance(src, str) and src.startswith("data:"):
        # data:image/png;base64,AAAA... (what OpenAI-style chat requests carry)
        accepts = "only base64 'data:image/...;base64,' URLs are supported"
        return io.BytesIO(data_url_bytes(src, label, ("image/",), accepts))
    if isinstance(src, str) and src.startswith(("http://", "https://")):
        raise InputError(f"{label}: URLs are not fetched here; download the image and pass its path or bytes")
    if isinstance(src, (str, os.PathLike)):
        if os.path.isdir(src):
            raise InputError(f"{label}: is a directory, not an image file")
        return src
    raise InputError(f"{label}: expected a path, bytes, a data URL or a PIL image, got {type(src).__name__}")


def _check_size(size: tuple[int, int], label: str, max_pixels: int | None) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InputError(f"{label}: the image is empty ({w}x{h} pixels)")
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(f"{label}: {w}x{h} = {w * h:,} pixels is over the limit max_pixels={max_pixels:,} "
                         f"(decompression-bomb guard); pass a larger max_pixels if you trust this image")


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Any Pillow mode -> a new RGB image (see the module docstring for the rules)."""
    img = ImageOps.exif_transpose(img)  # returns a new image either way
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(img)  # [H, W] uint16 (I;16*) or int32 (I)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"{label}: mode {mode} with values in [{lo}, {hi}] is not 16-bit image data; "
                             f"convert it to 8-bit RGB yourself")
        # scale the full 16-bit range onto 8 bits (x / 257), rounding to nearest
        a8 = np.round(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(np.repeat(a8[:, :, None], 3, axis=2))
    if mode == "F":
        raise InputError(f"{label}: floating-point image (mode F) has no defined value range; convert it "
                         f"to 8-bit RGB yourself")
    has_alpha = "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as e:
        raise InputError(f"{label}: cannot convert mode {mode} to RGB ({e})") from e


# ----------------------------------------------------------------------------------------------
# Config: preprocessor_config.json
# ----------------------------------------------------------------------------------------------

# transformers' class defaults (the *ImageProcessorPil class attributes) of the image processors Ocellus reads:
# what a preprocessor_config.json that leaves a key out means. Keyed by class name without Fast / Pil.
LLAVA_NEXT_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
_EVERY_CLASS = {"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD, "do_center_crop": None}
_CLIP_CLASS = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
               "default_to_square": False}
_CLASS_DEFAULTS = {
    "CLIPImageProcessor": _CLIP_CLASS,
    "LlavaImageProcessor": _CLIP_CLASS,
    "LlavaNextImageProcessor": {**_CLIP_CLASS, "image_grid_pinpoints": LLAVA_NEXT_GRID_PINPOINTS},
    "SiglipImageProcessor": {"size": {"height": 224, "width": 224}, "default_to_square": False,
                             "image_mean": IMAGENET_STANDARD_MEAN, "image_std": IMAGENET_STANDARD_STD},
    "BlipImageProcessor": {"size": {"height": 384, "width": 384}, "default_to_square": True},
    "GotOcr2ImageProcessor": {"size": {"height": 384, "width": 384}, "default_to_square": True,
                              "crop_to_patches": False, "min_patches": 1, "max_patches": 12},
    "Qwen2VLImageProcessor": {"size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
                              "default_to_square": False, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2},
}


def class_defaults(processor_type: str) -> dict:
    """The keys transformers' `processor_type` class fills in when a config leaves them out; {} for a class
    not in the table (its file is read as it is, with ImageProcessorConfig's own defaults)."""
    name = re.sub(r"(Fast|Pil)$", "", processor_type).replace("FeatureExtractor", "ImageProcessor")
    own = _CLASS_DEFAULTS.get(name)
    return {**_EVERY_CLASS, **own} if own is not None else {}


def _switched_number(d: dict, key: str, switch: str, kw: dict):
    """d[key], which the switch `switch` needs: null while the switch is on is a ConfigError (transformers
    refuses it too); null while it is off is never read, so the dataclass default stands in."""
    if d[key] is not None:
        return d[key]
    if kw.get(switch, True):
        raise ConfigError(f"preprocessor config: {key} is null but {switch} is on")
    return getattr(ImageProcessorConfig, key)


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The numbers of one image processor, as in a Hugging Face `preprocessor_config.json`.

    Resize target (exactly one of these is used when do_resize):
      shortest_edge  -- `size: {"shortest_edge": n}` (or a bare int): scale so the short side is n
      size_hw        -- `size: {"height": h, "width": w}`: squash to (h, w), no aspect kept
      min/max_pixels -- Qwen2-VL: `size: {"shortest_edge": min_pixels, "longest_edge": max_pixels}`
    crop_size is (h, w), used when do_center_crop.
    The strategy-specific fields are read by image_tiling.py: image_grid_pinpoints (LLaVA-NeXT),
    crop_to_patches/min_patches/max_patches (InternVL / GOT-OCR2), patch_size/temporal_patch_size/
    merge_size (Qwen2-VL).
    """
    do_resize: bool = True
    shortest_edge: int | None = None
    size_hw: tuple[int, int] | None = None
    resample: int = Image.Resampling.BICUBIC   # a Pillow filter code: 0 nearest, 2 bilinear, 3 bicubic, ...
    do_center_crop: bool = False
    crop_size: tuple[int, int] | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    # LLaVA-NeXT anyres: candidate canvases, (height, width)
    image_grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    # InternVL-1.5 / GOT-OCR2 dynamic tiling
    crop_to_patches: bool = False
    min_patches: int = 1
    max_patches: int = 12
    # Qwen2-VL
    min_pixels: int | None = None
    max_pixels: int | None = None
    patch_size: int | None = None
    temporal_patch_size: int | None = None
    merge_size: int | None = None
    processor_type: str = ""  # `image_processor_type`, informative only

    def __post_init__(self):
        if self.shortest_edge is not None and self.size_hw is not None:
            raise ConfigError("ImageProcessorConfig: give shortest_edge or size_hw, not both")
        positive_ints(self, ("shortest_edge", "min_patches", "max_patches", "patch_size", "temporal_patch_size",
                             "merge_size", "min_pixels", "max_pixels"), "ImageProcessorConfig.{}", optional=True)
        for field in ("size_hw", "crop_size"):
            v = getattr(self, field)
            if v is not None and (len(v) != 2 or any(not isinstance(x, int) or x <= 0 for x in v)):
                raise ConfigError(f"ImageProcessorConfig.{field} must be (height, width) positive ints, got {v!r}")
        if self.do_center_crop and self.crop_size is None:
            raise ConfigError("ImageProcessorConfig: do_center_crop is set but crop_size is missing")
        if self.resample not in {int(r) for r in Image.Resampling}:
            raise ConfigError(f"ImageProcessorConfig.resample must be a Pillow filter code 0-5, got {self.resample!r}")
        for field in ("image_mean", "image_std"):
            v = getattr(self, field)
            if len(v) != 3:
                raise ConfigError(f"ImageProcessorConfig.{field} needs 3 values (R, G, B), got {v!r}")
        if any(s == 0 for s in self.image_std):
            raise ConfigError(f"ImageProcessorConfig.image_std has a zero: {self.image_std!r}")
        if self.min_patches > self.max_patches:
            raise ConfigError(f"ImageProcessorConfig: min_patches={self.min_patches} > max_patches={self.max_patches}")

    @classmethod
    def from_dict(cls, d: dict) -> "ImageProcessorConfig":
        """Read the keys transformers writes in preprocessor_config.json; other keys are ignored.

        A key the file leaves out takes its processor class's default (class_defaults), as transformers
        fills it from the class; a key set to null stays null there, so a null switch is off and a null number a
        switch needs is a ConfigError. Ocellus always converts images to RGB (`do_convert_rgb` changes nothing
        on an RGB image; on any other mode transformers fails or yields 1 or 4 channels no tower takes)."""
        if not isinstance(d, dict):
            raise ConfigError(f"preprocessor config must be a JSON object, got {type(d).__name__}")
        ptype = str(d.get("image_processor_type") or d.get("feature_extractor_type") or "")
        d = {**class_defaults(ptype), **d}
        kw: dict = {"processor_type": ptype}
        for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "crop_to_patches"):
            if key in d:
                kw[key] = bool(d[key])   # null: off, as transformers' None is falsy
        for key in ("min_patches", "max_patches", "patch_size", "temporal_patch_size", "merge_size"):
            if d.get(key) is not None:
                kw[key] = d[key]
        if "rescale_factor" in d:
            kw["rescale_factor"] = float(_switched_number(d, "rescale_factor", "do_rescale", kw))
        if "resample" in d:
            kw["resample"] = _switched_number(d, "resample", "do_resize", kw)
        for key in ("image_mean", "image_std"):
            if key == "image_mean" and key in d and d[key] is None and not kw.get("do_normalize", True):
                # unread by the (off) normalisation, but LLaVA's square pad fills with int(mean * 255) and
                # transformers' fill for no mean is black
                kw[key] = (0.0, 0.0, 0.0)
            elif key in d:
                v = _switched_number(d, key, "do_normalize", kw)
                kw[key] = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3
        if d.get("image_grid_pinpoints") is not None:
            kw["image_grid_pinpoints"] = tuple((int(h), int(w)) for h, w in d["image_grid_pinpoints"])

        size = d.get("size")
        qwen = "qwen" in ptype.lower() and "vl" in ptype.lower()
        if qwen:
            # Qwen2-VL stores its pixel budget in `size`; legacy top-level keys override it, as in transformers
            size = dict(size or {})
            kw["min_pixels"] = (d.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
                                or 56 * 56)
            kw["max_pixels"] = (d.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
                                or 28 * 28 * 1280)
        elif isinstance(size, int) and not isinstance(size, bool):
            # transformers' get_size_dict: a bare int is a square for most classes, the shortest edge for those
            # whose class sets default_to_square=False (CLIP's, SigLIP's, LLaVA's; and old files with no class)
            if d.get("default_to_square", bool(ptype)):  # no class at all: Ocellus' old reading
                kw["size_hw"] = (size, size)
            else:
                kw["shortest_edge"] = size
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            kw["size_hw"] = tuple(size)   # (height, width), get_size_dict's order
        elif isinstance(size, dict):
            if set(size) == {"shortest_edge"}:
                kw["shortest_edge"] = size["shortest_edge"]
            elif set(size) == {"height", "width"}:
                kw["size_hw"] = (size["height"], size["width"])
            else:
                raise ConfigError(f"preprocessor config: unsupported size {size!r} for {ptype or 'this processor'}; "
                                  f"expected {{'shortest_edge': n}} or {{'height': h, 'width': w}}")
        elif size is not None:
            raise ConfigError(f"preprocessor config: unsupported size {size!r}")
        elif kw.get("do_resize", True):
            raise ConfigError("preprocessor config: do_resize is set but there is no `size`")

        crop = d.get("crop_size")
        if isinstance(crop, int) and not isinstance(crop, bool):
            kw["crop_size"] = (crop, crop)
        elif isinstance(crop, (list, tuple)) and len(crop) == 2:
            kw["crop_size"] = tuple(crop)
        elif isinstance(crop, dict):
            if set(crop) != {"height", "width"}:
                raise ConfigError(f"preprocessor config: crop_size must be {{'height', 'width'}}, got {crop!r}")
            kw["crop_size"] = (crop["height"], crop["width"])
        elif crop is not None:
            raise ConfigError(f"preprocessor config: unsupported crop_size {crop!r}")
        return cls(**kw)

    @classmethod
    def from_dir(cls, path) -> "ImageProcessorConfig":
        """Read `<path>/preprocessor_config.json` (or the file itself when `path` is a file)."""
        p = Path(path)
        d = read_json_object(p / "preprocessor_config.json" if p.is_dir() else p, error=ConfigError)
        if d is None:
            raise ConfigError(f"no preprocessor_config.json in {p}")
        return cls.from_dict(d)


IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)   # what the recipes' own towers are trained with (SigLIP's numbers)


def image_config(size: int) -> ImageProcessorConfig:
    """The recipes' preprocessing at `size`: a bicubic resize to size x size, no crop, mean / std 0.5."""
    return ImageProcessorConfig.from_dict({
        "do_resize": True, "size": {"height": size, "width": size}, "do_center_crop": False,
        "do_normalize": True, "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3})


# ----------------------------------------------------------------------------------------------
# Transforms (each the Pillow/numpy step of transformers' PilBackend, done on PIL + torch)
# ----------------------------------------------------------------------------------------------

def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(H', W') with the short side = shortest_edge and the long side scaled and truncated
    (int(), not round(): torchvision's rule, which transformers follows)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def resize_target(height: int, width: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    """The (H, W) `cfg` resizes an image of (height, width) to."""
    if cfg.shortest_edge is not None:
        return shortest_edge_size(height, width, cfg.shortest_edge)
    if cfg.size_hw is not None:
        return cfg.size_hw
    raise ConfigError("ImageProcessorConfig: do_resize needs shortest_edge or size_hw")


def resize(img: Image.Image, size_hw: tuple[int, int], resample: int, name: str = "image") -> Image.Image:
    """Pillow resize to (H, W). On uint8 RGB, as the reference does: any other path
    (float, torch interpolate) would not give the same pixels. An InputError naming the image (`name`) when
    the target is over the pixel limit (check_made_size), before Pillow allocates it."""
    check_made_size(size_hw, name, "resizing it")
    h, w = size_hw
    return img.resize((w, h), resample=resample)  # PIL sizes are (W, H)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> uint8 [3, H, W]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]


def center_crop(x: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
    """[..., H, W] -> [..., h, w], the window centred (top = (H - h) // 2). An image smaller than the
    crop is zero-padded around (ceil of half the excess on the top/left), as transformers does."""
    H, W = x.shape[-2:]
    ch, cw = crop_hw
    top, left = (H - ch) // 2, (W - cw) // 2
    if top >= 0 and left >= 0:
        return x[..., top:top + ch, left:left + cw]
    # pad to at least the crop size, then take the same window shifted by the padding
    nh, nw = max(ch, H), max(cw, W)
    pad_t, pad_l = -(-(nh - H) // 2), -(-(nw - W) // 2)  # ceil
    canvas = x.new_zeros(*x.shape[:-2], nh, nw)
    canvas[..., pad_t:pad_t + H, pad_l:pad_l + W] = x
    top, left = top + pad_t, left + pad_l
    return canvas[..., max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw)]


def rescale_normalize(x: torch.Tensor, cfg: ImageProcessorConfig) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 [..., 3, H, W]. The rescale is done in float64 and cast once,
    the normalisation in float32: the arithmetic of transformers, so the results are bit-equal.
    (numpy, not torch, does the elementwise work: on small CPUs torch's per-op threading overhead
    made this step 10x slower.)"""
    a = x.numpy()
    if cfg.do_rescale:
        a = (a.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    else:
        a = a.astype(np.float32)
    if cfg.do_normalize:
        mean = np.array(cfg.image_mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.array(cfg.image_std, dtype=np.float32).reshape(3, 1, 1)
        a = (a - mean) / std
    return torch.from_numpy(np.ascontiguousarray(a))


def transformed_size(size_hw: tuple[int, int], cfg: ImageProcessorConfig) -> tuple[int, int]:
    """(H, W) transform_image makes of an image of size_hw, without touching pixels."""
    if cfg.do_center_crop:
        return cfg.crop_size   # a crop larger than the image is padded up to it
    return resize_target(*size_hw, cfg) if cfg.do_resize else tuple(size_hw)


def check_made_size(size_hw: tuple[int, int], label: str, what: str) -> None:
    """InputError naming the image when a step would make an image of more than DEFAULT_MAX_PIXELS (the load
    guard's bound): a shortest-edge resize of a 1 x 8000 strip is 224 x 1,792,000 pixels, a square pad of it
    8000 x 8000 -- sizes a small file reaches through its aspect ratio alone."""
    h, w = size_hw
    if h * w > DEFAULT_MAX_PIXELS:
        raise InputError(f"{label}: {what} would make it {h}x{w} = {h * w:,} pixels, over the limit of "
                         f"{DEFAULT_MAX_PIXELS:,} (an extreme aspect ratio, or a processor config asking for too "
                         f"large a size)")


def transform_image(img: Image.Image, cfg: ImageProcessorConfig, name: str = "image") -> torch.Tensor:
    """One RGB PIL image -> float32 [3, H, W]: resize, center crop, rescale, normalize. name: how an
    InputError calls the image."""
    if cfg.do_resize:
        img = resize(img, resize_target(img.height, img.width, cfg), cfg.resample, name)
    x = pil_to_tensor(img)  # [3, H, W] uint8
    if cfg.do_center_crop:
        x = center_crop(x, cfg.crop_size)
    return rescale_normalize(x, cfg)


def mean_color(cfg: ImageProcessorConfig) -> tuple[int, int, int]:
    """The background LLaVA pads with: the normalisation mean in 0..255, truncated as LLaVA does
    (`tuple(int(x * 255) for x in image_processor.image_mean)`)."""
    return tuple(int(m * 255) for m in cfg.image_mean)


def expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5 "pad": paste the image centred on a square canvas of its long side, filled with
    `background`. The offset is (long - short) // 2, so odd excess goes to the bottom/right."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), background)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def preprocess(images, cfg: ImageProcessorConfig, *, pad_to_square: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """images (a list of anything `load_image` takes) -> pixel_values float32 [N, 3, H, W].

    CLIP (resize shortest edge + center crop) or SigLIP (resize to fixed (H, W)) depending on cfg.
    pad_to_square=True is LLaVA-1.5's "pad" aspect mode: `expand2square` with the mean colour first.
    Raises InputError when the images do not end up the same size (e.g. shortest-edge resize with
    no crop on images of different aspect ratios): a batch tensor cannot hold them.
    """
    imgs = load_images(images, max_pixels=max_pixels)
    if not imgs:
        raise InputError("preprocess: no images given")
    out = []
    for i, img in enumerate(imgs):
        if pad_to_square:
            side = max(img.size)
            check_made_size((side, side), f"image {i}", "padding it to a square")
            img = expand2square(img, mean_color(cfg))
        out.append(transform_image(img, cfg, f"image {i}"))  # [3, H, W]
    shapes = {tuple(x.shape) for x in out}
    if len(shapes) > 1:
        raise InputError(f"preprocess: images end up with different shapes {sorted(shapes)}; use a fixed size "
                         f"or a center crop in the processor config to batch them")
    return torch.stack(out)  # [N, 3, H, W]
