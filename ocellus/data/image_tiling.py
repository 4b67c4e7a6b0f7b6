"""High-resolution image strategies, and `tokens_per_image`, the one place image tokens are counted.

Each strategy turns one image into the pixels a ViT sees, and fixes how many tokens the LLM sees:

- LLaVA-NeXT "anyres" (Liu et al. 2024, "LLaVA-NeXT: Improved reasoning, OCR, and world
  knowledge"; transformers' LlavaNextImageProcessor / LlavaNextProcessor / modeling_llava_next):
  pick the grid canvas that keeps the most of the image (`select_best_resolution`), resize into it
  keeping the aspect, pad with black, cut into base-size tiles, and put a squashed global view
  FIRST. Tokens: the global view's patches, then the tile features with the padding removed
  (`anyres_unpad_box`) and one newline token per remaining feature row.
- InternVL-1.5 dynamic aspect-ratio tiling (Chen et al. 2024, "How Far Are We to GPT-4V?";
  InternVL's `dynamic_preprocess`, transformers' GotOcr2ImageProcessor with crop_to_patches):
  choose a (cols, rows) grid with min <= cols*rows <= max whose aspect ratio is nearest the
  image's, resize to (rows*448, cols*448), cut 448-tiles, and append a 448 thumbnail LAST when
  there is more than one tile. Tokens: 256 per tile after the 0.5 pixel shuffle.
- Qwen2-VL naive dynamic resolution (Wang et al. 2024, "Qwen2-VL"; transformers'
  Qwen2VLImageProcessor): `smart_resize` to multiples of 28 within a pixel budget, then flatten
  14x14 patches (each image repeated over the temporal patch of 2) in 2x2-merge order.
  Tokens: t*h*w / merge^2.

Every function here is checked against transformers 5.x (Pillow backend) in
tests/parity/test_image_parity.py. Sizes are (height, width) unless a name says otherwise;
grids of tiles are (cols, rows) only where InternVL itself uses that order, and say so.
"""

import inspect
import math

import torch
from PIL import Image

from ocellus.data.image import (
    DEFAULT_MAX_PIXELS,
    ImageProcessorConfig,
    load_images,
    pil_to_tensor,
    rescale_normalize,
    resize,
    transform_image,
    transformed_size,
)
from ocellus.errors import ConfigError, InputError


# ----------------------------------------------------------------------------------------------
# LLaVA-NeXT anyres
# ----------------------------------------------------------------------------------------------

def select_best_resolution(image_size: tuple[int, int], candidates) -> tuple[int, int]:
    """The candidate (H, W) canvas for an image of image_size (H, W): the largest effective
    resolution (pixels of the image that survive fitting into the canvas, never more than the
    original), ties broken by the least wasted canvas area; the first candidate wins full ties."""
    oh, ow = image_size
    best, best_effective, best_wasted = None, 0, float("inf")
    for ch, cw in candidates:
        scale = min(cw / ow, ch / oh)  # fit inside the canvas, aspect kept
        effective = min(int(ow * scale) * int(oh * scale), ow * oh)  # upscaling adds no information
        wasted = ch * cw - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (ch, cw), effective, wasted
    if best is None:
        raise ConfigError(f"select_best_resolution: no candidate canvases given ({candidates!r})")
    return best


def anyres_fit_size(image_size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the image resized to fit the canvas (H, W), aspect kept; the short side is rounded
    UP (ceil), as LLaVA-NeXT's resize_and_pad_image does, then capped to the canvas."""
    oh, ow = image_size
    ch, cw = canvas
    scale_w, scale_h = cw / ow, ch / oh
    if scale_w < scale_h:  # width is the binding side
        return min(math.ceil(oh * scale_w), ch), cw
    return ch, min(math.ceil(ow * scale_h), cw)


def anyres_resize_and_pad(img: Image.Image, canvas: tuple[int, int], resample: int) -> Image.Image:
    """Resize into the canvas (H, W) keeping the aspect and centre it on black; odd padding goes to
    the bottom/right."""
    nh, nw = anyres_fit_size((img.height, img.width), canvas)
    ch, cw = canvas
    out = Image.new("RGB", (cw, ch), (0, 0, 0))
    out.paste(resize(img, (nh, nw), resample), ((cw - nw) // 2, (ch - nh) // 2))
    return out


def _anyres_sizes(cfg: ImageProcessorConfig) -> tuple[tuple[int, int], int]:
    """(global view (H, W), tile side) the way transformers' LLaVA-NeXT reads them from the config."""
    if cfg.size_hw is not None:
        view = cfg.size_hw
    elif cfg.shortest_edge is not None:
        view = (cfg.shortest_edge, cfg.shortest_edge)
    else:
        raise ConfigError("anyres needs `size` in the processor config")
    tile = cfg.crop_size[0] if cfg.crop_size is not None else view[0]
    return view, tile


def _check_pinpoints(grid_pinpoints, tile_size: int) -> None:
    if not grid_pinpoints:
        raise ConfigError("anyres needs image_grid_pinpoints in the processor config")
    bad = [p for p in grid_pinpoints if p[0] % tile_size or p[1] % tile_size]
    if bad:  # a partial tile would be neither what the ViT expects nor countable
        raise ConfigError(f"anyres: image_grid_pinpoints {bad} are not multiples of the tile size {tile_size}")


def anyres_view_size(cfg: ImageProcessorConfig) -> tuple[int, int]:
    """(H, W) of every anyres view after cfg's transform: the global view and the tiles must come out one size
    (a batch of views, one vision tower), else a ConfigError naming the fields that made them differ."""
    view, tile = _anyres_sizes(cfg)
    made = {transformed_size(view, cfg), transformed_size((tile, tile), cfg)}
    if len(made) > 1:
        raise ConfigError(f"anyres: the {view[0]}x{view[1]} global view and the {tile}x{tile} tiles come out as "
                          f"{sorted(made)} under do_resize={cfg.do_resize}, size, do_center_crop={cfg.do_center_crop}, "
                          f"crop_size={cfg.crop_size}; every view must be one size")
    return made.pop()


def check_anyres_views(cfg: ImageProcessorConfig, tile_size: int, who: str = "anyres") -> None:
    """A ConfigError naming both sizes unless every anyres view comes out tile_size x tile_size, the tower's input:
    the model counts and packs each view as that many patches, whatever size the pixels have."""
    made = anyres_view_size(cfg)
    if made != (tile_size, tile_size):
        raise ConfigError(f"{who}: the image processor makes {made[0]}x{made[1]} views but the vision tower takes "
                          f"{tile_size}x{tile_size} (its image_size); set size / crop_size to it")


def anyres_views(img: Image.Image, cfg: ImageProcessorConfig) -> list[Image.Image]:
    """[global view, tile_0, tile_1, ...]: the global view is the whole image squashed to the base
    size; tiles are row-major over the padded canvas chosen by select_best_resolution."""
    view, tile = _anyres_sizes(cfg)
    _check_pinpoints(cfg.image_grid_pinpoints, tile)
    canvas = select_best_resolution((img.height, img.width), cfg.image_grid_pinpoints)
    padded = anyres_resize_and_pad(img, canvas, cfg.resample)
    tiles = [padded.crop((x, y, x + tile, y + tile))  # PIL boxes are (left, top, right, bottom)
             for y in range(0, canvas[0], tile) for x in range(0, canvas[1], tile)]
    return [resize(img, view, cfg.resample)] + tiles


def preprocess_anyres(images, cfg: ImageProcessorConfig, *, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """LLaVA-NeXT anyres -> (pixel_values float32 [N, V, 3, H, W], image_sizes int64 [N, 2]).

    V is the largest number of views (1 global + tiles) in the batch; images with fewer views are
    zero-padded, as transformers does with do_pad; image_sizes (original (H, W)) tells the model
    how many views are real. Each view goes through the CLIP transform of `cfg`.
    """
    anyres_view_size(cfg)   # a config whose views differ in size fails here, not in torch.stack
    imgs = load_images(images, max_pixels=max_pixels)
    if not imgs:
        raise InputError("preprocess_anyres: no images given")
    per_image = [torch.stack([transform_image(v, cfg) for v in anyres_views(img, cfg)])  # [V_i, 3, H, W]
                 for img in imgs]
    v_max = max(x.shape[0] for x in per_image)
    pixel_values = torch.zeros(len(imgs), v_max, *per_image[0].shape[1:])  # [N, V, 3, H, W]
    for i, x in enumerate(per_image):
        pixel_values[i, : x.shape[0]] = x
    image_sizes = torch.tensor([[img.height, img.width] for img in imgs], dtype=torch.int64)  # [N, 2]
    return pixel_values, image_sizes


def anyres_unpad_box(image_size: tuple[int, int], feature_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the tile-feature map [feature_size = (rows, cols)] that holds
    the image and not the black padding, for an original image of image_size (H, W).

    Same arithmetic as LLaVA-NeXT's `unpad_image` (rounding to 7 decimals before int() absorbs
    float noise); the same padding is cut on both sides, so an odd excess leaves one padded row.
    The model slices its features with this box; `anyres_num_tokens` counts with it.
    """
    oh, ow = image_size
    rows, cols = feature_size
    if ow / oh > cols / rows:  # the image is wider than the canvas: padding is above and below
        new_rows = int(round(oh * (cols / ow), 7))
        pad = (rows - new_rows) // 2
        return pad, rows - pad, 0, cols
    new_cols = int(round(ow * (rows / oh), 7))
    pad = (cols - new_cols) // 2
    return 0, rows, pad, cols - pad


def unpad_features(features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """[D, rows, cols] tile features -> [D, rows', cols'] with the padding removed."""
    top, bottom, left, right = anyres_unpad_box(image_size, tuple(features.shape[-2:]))
    return features[..., top:bottom, left:right]


# ----------------------------------------------------------------------------------------------
# InternVL-1.5 dynamic tiling
# ----------------------------------------------------------------------------------------------

def internvl_candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (cols, rows) with min_tiles <= cols*rows <= max_tiles, ordered by tile count (stable,
    cols-major inside one count: the order transformers' GotOcr2 uses, which decides the rare
    exact ties between (a, b) and (b, a))."""
    if not 1 <= min_tiles <= max_tiles:
        raise ConfigError(f"InternVL tiling needs 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]
    return sorted(grids, key=lambda g: g[0] * g[1])


def internvl_grid(image_size: tuple[int, int], *, min_tiles: int = 1, max_tiles: int = 12,
                  tile_size=448) -> tuple[int, int]:
    """(cols, rows) for an image of (H, W): the candidate whose cols/rows is nearest W/H. On an exact
    tie the later candidate (more tiles) wins only while the image area is more than half the
    new canvas area -- InternVL's `find_closest_aspect_ratio` rule, so small images are not blown
    up onto many tiles."""
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    h, w = image_size
    aspect, area = w / h, w * h
    best, best_diff = (1, 1), float("inf")
    for cols, rows in internvl_candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_h * tile_w * cols * rows:
            best = (cols, rows)
    return best


def internvl_num_tiles(image_size: tuple[int, int], *, min_tiles: int = 1, max_tiles: int = 12,
                       tile_size=448, use_thumbnail: bool = True) -> int:
    """How many 448-images `internvl_tiles` makes: cols*rows, +1 thumbnail when that is > 1."""
    cols, rows = internvl_grid(image_size, min_tiles=min_tiles, max_tiles=max_tiles, tile_size=tile_size)
    n = cols * rows
    return n + 1 if use_thumbnail and n > 1 else n


def internvl_tiles(img: Image.Image, *, min_tiles: int = 1, max_tiles: int = 12, tile_size=448,
                   resample: int = Image.Resampling.BICUBIC, use_thumbnail: bool = True) -> list[Image.Image]:
    """[tile_0, ..., tile_{cols*rows-1}, (thumbnail)]: tiles row-major over the image resized to
    (rows*tile, cols*tile); the thumbnail (whole image squashed to one tile) comes LAST."""
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    cols, rows = internvl_grid((img.height, img.width), min_tiles=min_tiles, max_tiles=max_tiles,
                               tile_size=tile_size)
    big = resize(img, (rows * tile_h, cols * tile_w), resample)
    tiles = [big.crop((c * tile_w, r * tile_h, (c + 1) * tile_w, (r + 1) * tile_h))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(resize(img, (tile_h, tile_w), resample))
    return tiles


def preprocess_internvl(images, cfg: ImageProcessorConfig, *, use_thumbnail: bool = True,
                        max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """InternVL dynamic tiling -> (pixel_values float32 [sum(num_tiles), 3, S, S], num_tiles list[int]).

    Tile size = cfg.size_hw, bounds = cfg.min_patches / cfg.max_patches. With crop_to_patches off
    (or max_patches == 1) each image is one plain resize, as in transformers' GotOcr2 processor.
    """
    if cfg.size_hw is None:
        raise ConfigError("InternVL tiling needs size {'height', 'width'} (the tile size) in the processor config")
    imgs = load_images(images, max_pixels=max_pixels)
    if not imgs:
        raise InputError("preprocess_internvl: no images given")
    out, num_tiles = [], []
    for img in imgs:
        if cfg.crop_to_patches and cfg.max_patches > 1:
            tiles = internvl_tiles(img, min_tiles=cfg.min_patches, max_tiles=cfg.max_patches,
                                   tile_size=cfg.size_hw, resample=cfg.resample, use_thumbnail=use_thumbnail)
        else:
            tiles = [resize(img, cfg.size_hw, cfg.resample) if cfg.do_resize else img]
        out += [rescale_normalize(pil_to_tensor(t), cfg) for t in tiles]  # each [3, S, S]
        num_tiles.append(len(tiles))
    shapes = {tuple(x.shape) for x in out}
    if len(shapes) > 1:
        raise InputError(f"preprocess_internvl: tiles of different shapes {sorted(shapes)} (do_resize is off?)")
    return torch.stack(out), num_tiles


# ----------------------------------------------------------------------------------------------
# Qwen2-VL
# ----------------------------------------------------------------------------------------------

def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """(H', W'), both multiples of `factor`, H'*W' within [min_pixels, max_pixels], aspect kept as
    well as the rounding allows -- Qwen2-VL's rule:
      round each side to the nearest multiple (Python's round: halves go to even);
      too many pixels -> shrink both by sqrt(area / max_pixels) and round DOWN (at least one factor);
      too few -> grow both by sqrt(min_pixels / area) and round UP.
    Raises InputError for an empty image or an aspect ratio over 200 (Qwen2-VL refuses those too).
    """
    if height <= 0 or width <= 0:
        raise InputError(f"smart_resize: image of {height}x{width} pixels is empty")
    if max(height, width) / min(height, width) > 200:
        raise InputError(f"smart_resize: aspect ratio {max(height, width) / min(height, width):.1f} of a "
                         f"{height}x{width} image is over Qwen2-VL's limit of 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def qwen2vl_patchify(pixels: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2,
                     merge_size: int = 2) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised pixels [C, H, W] (an image) or [F, C, H, W] (frames) ->
    (patches [t*h*w, C*T*p*p], grid_thw (t, h, w)).

    An image is repeated over the temporal patch (T copies); frames are padded to a multiple of
    T by repeating the last one. Patches are ordered so that each merge_size x merge_size group of
    neighbours is contiguous (the order Qwen2-VL's patch merger expects), and each row is laid out
    as (C, T, p, p), the Conv3d kernel's layout.
    """
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(0)  # [1, C, H, W]
    if pixels.dim() != 4:
        raise InputError(f"qwen2vl_patchify: expected [C, H, W] or [F, C, H, W], got shape {tuple(pixels.shape)}")
    F, C, H, W = pixels.shape
    unit = patch_size * merge_size
    if H % unit or W % unit:
        raise InputError(f"qwen2vl_patchify: {H}x{W} is not a multiple of patch_size*merge_size={unit}; "
                         f"smart_resize the image first")
    if F % temporal_patch_size:  # repeat the last frame up to a multiple of T
        if F == 1:
            pixels = pixels.expand(temporal_patch_size, C, H, W)  # a view: no copy for a still image
        else:
            pad = temporal_patch_size - F % temporal_patch_size
            pixels = torch.cat([pixels, pixels[-1:].expand(pad, C, H, W)])
    t, h, w = pixels.shape[0] // temporal_patch_size, H // patch_size, W // patch_size
    m, p, T = merge_size, patch_size, temporal_patch_size
    x = pixels.reshape(t, T, C, h // m, m, p, w // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [t, h/m, w/m, m, m, C, T, p, p]
    return x.reshape(t * h * w, C * T * p * p), (t, h, w)


def preprocess_qwen2vl(images, cfg: ImageProcessorConfig, *, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Qwen2-VL -> (pixel_values float32 [sum(t*h*w), C*T*p*p], image_grid_thw int64 [N, 3]).

    cfg.min_pixels / max_pixels bound the resized area (defaults 56*56 and 28*28*1280, as
    Qwen2-VL); `max_pixels` here is the load-time decompression-bomb guard, a different thing.
    """
    p = cfg.patch_size or 14
    T = cfg.temporal_patch_size or 2
    m = cfg.merge_size or 2
    imgs = load_images(images, max_pixels=max_pixels)
    if not imgs:
        raise InputError("preprocess_qwen2vl: no images given")
    patches, grids = [], []
    for i, img in enumerate(imgs):
        if cfg.do_resize:
            size = smart_resize(img.height, img.width, factor=p * m, min_pixels=cfg.min_pixels or 56 * 56,
                                max_pixels=cfg.max_pixels or 28 * 28 * 1280)
            img = resize(img, size, cfg.resample, f"image {i}")
        x, thw = qwen2vl_patchify(rescale_normalize(pil_to_tensor(img), cfg), p, T, m)
        patches.append(x)
        grids.append(thw)
    return torch.cat(patches), torch.tensor(grids, dtype=torch.int64)


def qwen2vl_grid(image_size: tuple[int, int], *, patch_size: int = 14, merge_size: int = 2,
                 min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> tuple[int, int, int]:
    """grid_thw (1, h, w) an image of (H, W) will get, without touching pixels."""
    rh, rw = smart_resize(*image_size, factor=patch_size * merge_size, min_pixels=min_pixels,
                          max_pixels=max_pixels)
    return 1, rh // patch_size, rw // patch_size


# ----------------------------------------------------------------------------------------------
# Token counts: the processor (to expand the placeholder) and the model (to check the splice)
# both call these, so they cannot disagree.
# ----------------------------------------------------------------------------------------------

def _check_select(feature_select: str) -> None:
    if feature_select not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy must be 'default' or 'full', got {feature_select!r}")


def clip_num_tokens(image_size, patch_size: int, *, feature_select: str = "default",
                    num_extra_tokens: int = 1) -> int:
    """Tokens of one ViT image (LLaVA-1.5): (H/p)*(W/p) patches + num_extra_tokens (1 for CLIP's
    CLS, 0 for SigLIP), minus 1 with feature_select='default', which drops the first token as LLaVA
    does ([:, 1:]) -- on a CLS-less tower that drops a patch, in the reference as here."""
    _check_select(feature_select)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    n = (h // patch_size) * (w // patch_size) + num_extra_tokens
    return n - 1 if feature_select == "default" else n


def anyres_max_shape(rows: int, cols: int, side: int, max_patches: int | None) -> tuple[int, int]:
    """(rows, cols) of an unpadded tile-feature map after LLaVA-OneVision's `anyres_max_N` cap: a map holding
    more than ~N tiles' worth of features (side^2 each; 10% slack) is shrunk by one factor on both axes, each
    side floored, as transformers' pack_image_features interpolates it and its processor counts it. None: no cap
    (LLaVA-NeXT)."""
    if max_patches is None:
        return rows, cols
    ratio = math.sqrt(rows * cols / (max_patches * side ** 2))
    if ratio <= 1.1:
        return rows, cols
    return int(rows // ratio), int(cols // ratio)


def anyres_num_tokens(image_size: tuple[int, int], grid_pinpoints, *, tile_size: int, patch_size: int,
                      feature_select: str = "default", num_extra_tokens: int = 1,
                      image_newline: bool = True, max_patches: int | None = None) -> int:
    """Tokens of one LLaVA-NeXT image of original size (H, W):
    global view (as clip_num_tokens) + unpadded tile features rows*cols + one newline per row; for
    LLaVA-OneVision (max_patches: its anyres_max_N) the unpadded map capped by anyres_max_shape first.
    (transformers' LLaVA-NeXT model only runs with feature_select='default'; 'full' is counted as
    its processor counts it.)"""
    _check_pinpoints(grid_pinpoints, tile_size)
    best_h, best_w = select_best_resolution(image_size, grid_pinpoints)
    side = tile_size // patch_size  # feature rows/cols per tile
    feature_size = (best_h // tile_size * side, best_w // tile_size * side)
    top, bottom, left, right = anyres_unpad_box(image_size, feature_size)
    rows, cols = anyres_max_shape(bottom - top, right - left, side, max_patches)
    base = clip_num_tokens(tile_size, patch_size, feature_select=feature_select, num_extra_tokens=num_extra_tokens)
    return base + rows * cols + (rows if image_newline else 0)


def anyres_num_views(image_size: tuple[int, int], grid_pinpoints, *, tile_size: int) -> int:
    """Views of one anyres image of original size (H, W): the global view + the tiles of its canvas."""
    _check_pinpoints(grid_pinpoints, tile_size)
    best_h, best_w = select_best_resolution(image_size, grid_pinpoints)
    return 1 + (best_h // tile_size) * (best_w // tile_size)


def token_sampler_num_tokens(image_size: tuple[int, int], grid_pinpoints, *, tile_size: int, num_latents: int) -> int:
    """Tokens of one xGen-MM image (models/connectors/token_sampler.py): each of its views resampled to
    num_latents tokens on its own, V_i * L in all (no unpadding, no newlines)."""
    return anyres_num_views(image_size, grid_pinpoints, tile_size=tile_size) * num_latents


def internvl_num_tokens(num_tiles: int, *, tile_size: int = 448, patch_size: int = 14,
                        downsample_ratio: float = 0.5) -> int:
    """Context tokens of one InternVL image: num_tiles * (tile/patch)^2 * ratio^2 (256 for 448/14/0.5:
    the pixel shuffle folds 2x2 patches into one token). The <img>/</img> markers are not counted."""
    per_tile = int((tile_size // patch_size) ** 2 * downsample_ratio ** 2)
    return num_tiles * per_tile


def qwen2vl_num_tokens(grid_thw, *, merge_size: int = 2) -> int:
    """Tokens of one Qwen2-VL image/video: t*h*w / merge_size^2 (the merger folds m x m patches)."""
    t, h, w = (int(v) for v in grid_thw)
    if h % merge_size or w % merge_size:
        raise InputError(f"qwen2vl_num_tokens: grid {t}x{h}x{w} is not divisible by merge_size={merge_size}")
    return t * h * w // (merge_size * merge_size)


_TOKEN_COUNTERS = {
    "clip": clip_num_tokens,
    "anyres": anyres_num_tokens,
    "token_sampler": token_sampler_num_tokens,
    "internvl": internvl_num_tokens,
    "qwen2vl": qwen2vl_num_tokens,
}


def tokens_per_image(strategy: str, **kwargs) -> int:
    """Number of LLM tokens one image becomes. The processor (placeholder expansion) and the model
    (splice check) both call this.

    strategy and its arguments (see each function):
      'clip'     -> clip_num_tokens(image_size, patch_size, feature_select=, num_extra_tokens=)
      'anyres'   -> anyres_num_tokens(image_size, grid_pinpoints, tile_size=, patch_size=, feature_select=,
                                      num_extra_tokens=, image_newline=, max_patches=)
      'token_sampler' -> token_sampler_num_tokens(image_size, grid_pinpoints, tile_size=, num_latents=)
      'internvl' -> internvl_num_tokens(num_tiles, tile_size=, patch_size=, downsample_ratio=)
      'qwen2vl'  -> qwen2vl_num_tokens(grid_thw, merge_size=)
    Raises ConfigError for an unknown strategy or arguments that strategy does not take.
    """
    fn = _TOKEN_COUNTERS.get(strategy)
    if fn is None:
        raise ConfigError(f"tokens_per_image: unknown strategy {strategy!r}; one of {sorted(_TOKEN_COUNTERS)}")
    sig = inspect.signature(fn)
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"tokens_per_image({strategy!r}): {e}; it takes {fn.__name__}{sig}") from e
    return fn(**kwargs)
