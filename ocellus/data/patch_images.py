"""A Processor's default image path: CLIP-style towers whose tokens are their patches (LLaVA, LLaVA-1.5,
LLaVA-NeXT). Each image becomes as many tokens as the tower yields for it, counted by image_tiling.tokens_per_image,
the function the model side counts with, so the two cannot disagree. Families with another image path (BLIP-2
query slots, Qwen2-VL dynamic grids, InternVL tiles, ...) pass the Processor their own `image_inputs` instead.

Two layouts:
- single view (LLaVA, LLaVA-1.5): every image is resized/cropped to the tower's size (LLaVA-1.5's "pad" aspect
  mode first pads it to a square), pixel_values [N, 3, H, W], the same token count for every image;
- anyres (LLaVA-NeXT, `grid_pinpoints`): a global view plus the tiles of the best grid canvas, pixel_values
  [N, V, 3, H, W] (views zero-padded to the batch's largest V) and image_sizes [N, 2] (original (H, W)); each
  image's token count depends on its own size.
"""
from __future__ import annotations

from PIL import Image
import torch

from ocellus.data.image import ImageProcessorConfig, preprocess
from ocellus.data.image_tiling import check_anyres_views, preprocess_anyres, tokens_per_image


class PatchImages:
    """image_config: the preprocessing (with the anyres canvases when grid_pinpoints is set); patch_size,
    num_extra_tokens (1 for CLIP's CLS, 0 for SigLIP), feature_select ("default" drops the first token, "full"
    keeps it): how many tokens an image of a given size becomes; tile_size: the tower's input size (anyres)."""

    def __init__(self, image_config: ImageProcessorConfig, *, patch_size: int, num_extra_tokens: int,
                 feature_select: str, pad_to_square: bool, grid_pinpoints, tile_size: int | None):
        self.image_config, self.patch_size, self.num_extra_tokens = image_config, patch_size, num_extra_tokens
        self.feature_select, self.pad_to_square = feature_select, pad_to_square
        self.grid_pinpoints, self.tile_size = grid_pinpoints, tile_size

    def check(self) -> None:
        """A ConfigError now for numbers that cannot count tokens (not later, at the first image), and for anyres
        views of another size than the tower's input: every view is counted (and packed) as tile x tile."""
        side = self.patch_size if self.grid_pinpoints is None else self.tile_size
        self.num_image_tokens(side, side)
        if self.grid_pinpoints is not None:
            check_anyres_views(self.image_config, side)

    def num_image_tokens(self, height: int, width: int) -> int:
        """Tokens one image becomes (what the model splices in). Single view: (height, width) is the
        PREPROCESSED size (pixel_values' H, W). Anyres: it is the ORIGINAL image size, which decides
        the grid canvas and the unpadded tile rows/cols."""
        if self.grid_pinpoints is None:
            return tokens_per_image("clip", image_size=(height, width), patch_size=self.patch_size,
                                    feature_select=self.feature_select, num_extra_tokens=self.num_extra_tokens)
        return tokens_per_image("anyres", image_size=(height, width), grid_pinpoints=self.grid_pinpoints,
                                tile_size=self.tile_size, patch_size=self.patch_size,
                                feature_select=self.feature_select, num_extra_tokens=self.num_extra_tokens)

    def __call__(self, images: list[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Loaded images -> (pixel_values (+ image_sizes), image tokens per image): an ImageInputs."""
        if self.grid_pinpoints is None:
            pixel_values = preprocess(images, self.image_config, pad_to_square=self.pad_to_square,
                                      max_pixels=None)                                          # [N, 3, H, W]
            return {"pixel_values": pixel_values}, [self.num_image_tokens(*pixel_values.shape[-2:])] * len(images)
        pixel_values, image_sizes = preprocess_anyres(images, self.image_config, max_pixels=None)
        per_image = [self.num_image_tokens(img.height, img.width) for img in images]
        return {"pixel_values": pixel_values, "image_sizes": image_sizes}, per_image  # [N, V, 3, H, W], [N, 2]


__all__ = ["PatchImages"]
