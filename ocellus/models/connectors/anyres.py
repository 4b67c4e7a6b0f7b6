"""LLaVA-NeXT "AnyRes" packing: the views of one high-resolution image -> one token sequence.

Liu et al. 2024, "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge" (the LLaVA-NeXT
blog, January 2024); reference: transformers' modeling_llava_next.py (`pack_image_features`,
`get_image_features`, `image_newline`; the "spatial_unpad" merge, the only one it implements).

The processor (`ocellus.data.image_tiling.preprocess_anyres`) turns an image of (H, W) into
V = 1 + rows*cols views of tile x tile pixels: a squashed global view first, then the tiles of
the canvas picked by `select_best_resolution`, row-major. The ViT and projector turn every view
into P = (tile/patch)^2 feature rows. This module puts them back together, per image:

    base  = features of the global view                                   [P, D]
    grid  = the tile features laid out as one big map                     [rows*side, cols*side, D]
            cut down to the part that holds the image, not the black
            padding the processor added (`anyres_unpad_box`)              [r, c, D]
            with the learned `image_newline` vector after every row       [r, c + 1, D]
    out   = [base ; grid flattened row-major]                              [P + r*(c+1), D]

LLaVA-OneVision (its vision_aspect_ratio "anyres_max_N", `max_patches`) shrinks the unpadded grid
bilinearly to `anyres_max_shape` before the newlines when it holds more than ~N tiles' features (`cap`).
The newline token tells the LLM where a row of the (variable-shaped) grid ends, which a flat
sequence otherwise cannot say. The count is checked against `tokens_per_image('anyres', ...)`,
the function the processor uses to expand the <image> placeholder, so both sides agree or an
InputError names the image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ocellus.data.image_tiling import (
    _check_pinpoints,
    anyres_max_shape,
    anyres_unpad_box,
    clip_num_tokens,
    select_best_resolution,
    tokens_per_image,
)
from ocellus.errors import ConfigError, InputError


class AnyresPacker(nn.Module):
    """(projected view features [sum V_i, P, D], image_sizes [N, 2]) -> N sequences [T_i, D].

    grid_pinpoints: candidate canvases (H, W) in pixels, multiples of tile_size (config.json's
    image_grid_pinpoints). tile_size: the vision tower's image_size (each view is tile x tile).
    patch_size: the tower's patch size. feature_select / num_extra_tokens: what the tower's
    `features()` keeps per view ('default' drops CLIP's CLS; num_extra_tokens 1 for CLIP, 0 for SigLIP).
    max_patches: LLaVA-OneVision's vision_aspect_ratio anyres_max_N: an unpadded grid of more than ~N tiles'
    features is bilinearly shrunk to anyres_max_shape before its newlines (None: LLaVA-NeXT, never).
    """

    def __init__(self, hidden_size: int, grid_pinpoints, tile_size: int, patch_size: int,
                 feature_select: str = "default", num_extra_tokens: int = 1, max_patches: int | None = None):
        super().__init__()
        self.max_patches = max_patches
        self.grid_pinpoints = [tuple(int(x) for x in p) for p in (grid_pinpoints or [])]
        _check_pinpoints(self.grid_pinpoints, tile_size)
        self.tile_size = tile_size
        self.patch_size = patch_size
        self.side = tile_size // patch_size  # feature rows (and cols) per view
        self.feature_select = feature_select
        self.num_extra_tokens = num_extra_tokens
        per_view = clip_num_tokens(tile_size, patch_size, feature_select=feature_select,
                                   num_extra_tokens=num_extra_tokens)
        if per_view != self.side * self.side:
            # the tile features must form a side x side map; transformers fails on these too
            raise ConfigError(f"LLaVA-NeXT anyres needs exactly (image_size/patch_size)^2 = {self.side ** 2} "
                              f"features per view, but vision_feature_select_strategy={feature_select!r} on a "
                              f"tower with {num_extra_tokens} extra token(s) gives {per_view}; use 'default' "
                              f"for a CLS tower (CLIP), 'full' for one without (SigLIP)")
        # LLaVA-NeXT initialises the newline like a token embedding: N(0, 1/D)
        self.image_newline = nn.Parameter(torch.empty(hidden_size))
        nn.init.normal_(self.image_newline, std=1 / math.sqrt(hidden_size))

    # -- geometry, from the original image size alone ----------------------------------------------
    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of tiles the processor cut for an image of (H, W)."""
        best_h, best_w = select_best_resolution(image_size, self.grid_pinpoints)
        return best_h // self.tile_size, best_w // self.tile_size

    def num_views(self, image_size: tuple[int, int]) -> int:
        """Real views of one image: the global view + its tiles (the rest of V is padding)."""
        rows, cols = self.grid_shape(image_size)
        return 1 + rows * cols

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        """LLM tokens of one image: the same count the processor uses to expand <image>."""
        return tokens_per_image("anyres", image_size=image_size, grid_pinpoints=self.grid_pinpoints,
                                tile_size=self.tile_size, patch_size=self.patch_size,
                                feature_select=self.feature_select, num_extra_tokens=self.num_extra_tokens,
                                image_newline=True, max_patches=self.max_patches)

    @staticmethod
    def sizes_list(image_sizes, num_images: int | None = None) -> list[tuple[int, int]]:
        """image_sizes [N, 2] (tensor or nested list) -> [(H, W), ...], checked."""
        if image_sizes is None:
            raise InputError("LLaVA-NeXT (anyres) needs image_sizes [num_images, 2] (original H, W) next to "
                             "pixel_values; the processor returns it")
        sizes = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else list(image_sizes)
        if any(len(s) != 2 for s in sizes):
            raise InputError(f"image_sizes must be [num_images, 2] (H, W), got {sizes!r}")
        if num_images is not None and len(sizes) != num_images:
            raise InputError(f"image_sizes has {len(sizes)} rows but pixel_values holds {num_images} images")
        out = [(int(h), int(w)) for h, w in sizes]
        bad = [i for i, (h, w) in enumerate(out) if h <= 0 or w <= 0]
        if bad:
            raise InputError(f"image_sizes: image {bad[0]} has size {out[bad[0]]}; sizes must be positive")
        return out

    def select_views(self, pixel_values: torch.Tensor, image_sizes) -> torch.Tensor:
        """pixel_values [N, V, 3, H, W] or flattened views [sum V_i, 3, H, W] -> [sum V_i, 3, H, W] (real_views)."""
        return real_views(pixel_values, image_sizes, self.num_views)

    # -- packing ------------------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, image_sizes) -> list[torch.Tensor]:
        """features [sum V_i, P, D] (views of all images, in order) -> [[T_0, D], [T_1, D], ...]."""
        sizes, counts = view_counts(features, image_sizes, self.num_views, "anyres packing")
        P, D = features.shape[1], features.shape[2]
        side = self.side
        if P != side * side:
            raise InputError(f"anyres packing: each view gave {P} features, a {side}x{side} map needs {side * side}; "
                             f"views must be {self.tile_size}x{self.tile_size} pixels")
        out = []
        for i, (views, size) in enumerate(zip(features.split(counts), sizes)):
            base, tiles = views[0], views[1:]                                        # [P, D], [rows*cols, P, D]
            rows, cols = self.grid_shape(size)
            grid = tiles.reshape(rows, cols, side, side, D)                          # [rows, cols, side, side, D]
            grid = grid.permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, D)  # [R, C, D] one big map
            top, bottom, left, right = anyres_unpad_box(size, (rows * side, cols * side))
            grid = self.cap(grid[top:bottom, left:right])                            # [r, c, D] padding cut
            newline = self.image_newline.to(grid.dtype).expand(grid.shape[0], 1, D)  # [r, 1, D]
            grid = torch.cat([grid, newline], dim=1)                                 # [r, c + 1, D]
            seq = torch.cat([base, grid.flatten(0, 1)])                              # [P + r*(c+1), D]
            expected = self.num_tokens(size)
            if seq.shape[0] != expected:
                raise InputError(f"image {i} of size {size[0]}x{size[1]}: the model packs {seq.shape[0]} tokens "
                                 f"but tokens_per_image('anyres') counts {expected}; the processor and the "
                                 f"model disagree on tile size, patch size or feature strategy")
            out.append(seq)
        return out

    def cap(self, grid: torch.Tensor) -> torch.Tensor:
        """[r, c, D] unpadded map -> [r', c', D] within max_patches tiles' worth (OneVision's anyres_max_N):
        bilinear, corners not aligned, as transformers interpolates it; unchanged when under the cap."""
        rows, cols = anyres_max_shape(grid.shape[0], grid.shape[1], self.side, self.max_patches)
        if (rows, cols) == tuple(grid.shape[:2]):
            return grid
        chw = grid.permute(2, 0, 1).unsqueeze(0)                                     # [1, D, r, c]
        return F.interpolate(chw, size=(rows, cols), mode="bilinear")[0].permute(1, 2, 0)   # [r', c', D]

    def extra_repr(self) -> str:
        cap = "" if self.max_patches is None else f", max_patches={self.max_patches}"
        return (f"grid_pinpoints={self.grid_pinpoints}, tile_size={self.tile_size}, patch_size={self.patch_size}, "
                f"feature_select={self.feature_select!r}{cap}")


def view_counts(features: torch.Tensor, image_sizes, num_views, what: str) -> tuple[list, list[int]]:
    """The checked image sizes [(H, W), ...] and each image's views (num_views(size)), once features
    [sum V_i, P, D] are seen to hold exactly those views (InputError naming `what` otherwise). Shared by the
    anyres packer and xGen-MM's token sampler, which both take the views of every image in order."""
    sizes = AnyresPacker.sizes_list(image_sizes)
    counts = [num_views(s) for s in sizes]
    if features.dim() != 3 or features.shape[0] != sum(counts):
        raise InputError(f"{what}: features {tuple(features.shape)} do not hold the {sum(counts)} "
                         f"views that image_sizes {sizes} need ({counts} per image)")
    return sizes, counts


def real_views(pixel_values: torch.Tensor, image_sizes, num_views) -> torch.Tensor:
    """pixel_values [N, V, 3, H, W] (views zero-padded to the batch's largest V, as preprocess_anyres returns
    them), or views already flattened [sum V_i, 3, H, W] -> the real views of every image, in order
    [sum V_i, 3, H, W]. num_views: an image's (H, W) -> its views (1 global + tiles). Shared by the anyres
    packer and xGen-MM's token sampler (connectors/token_sampler.py)."""
    if pixel_values.dim() == 5:
        sizes = AnyresPacker.sizes_list(image_sizes, pixel_values.shape[0])
        counts = [num_views(s) for s in sizes]
        for i, (n, s) in enumerate(zip(counts, sizes)):
            if n > pixel_values.shape[1]:
                raise InputError(f"image {i} of size {s[0]}x{s[1]} needs {n} views (1 global + "
                                 f"{n - 1} tiles) but pixel_values has only {pixel_values.shape[1]} per image; "
                                 f"image_sizes and pixel_values do not come from the same processor call")
        # drop the zero padding views: they would cost a ViT pass and give no tokens
        return torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)])            # [sum V_i, 3, H, W]
    if pixel_values.dim() == 4:
        sizes = AnyresPacker.sizes_list(image_sizes)
        need = sum(num_views(s) for s in sizes)
        if pixel_values.shape[0] != need:
            raise InputError(f"pixel_values holds {pixel_values.shape[0]} views but image_sizes {sizes} "
                             f"need {need} (1 global + tiles each)")
        return pixel_values
    raise InputError(f"pixel_values must be [num_images, num_views, 3, H, W] (or flattened views "
                     f"[sum_views, 3, H, W]) for anyres views, got {tuple(pixel_values.shape)}")
