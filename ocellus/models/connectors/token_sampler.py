"""Any-resolution vision token sampling of xGen-MM / BLIP-3 (Xue et al. 2024, "xGen-MM (BLIP-3): A
Family of Open Large Multimodal Models", section 3 / Fig. 2; reference: salesforce/LAVIS, branch
xgen-mm, `PerceiverResampler` applied per patch in its vision-token sampler).

An image is cut the LLaVA-NeXT way (ocellus/data/image_tiling.py `preprocess_anyres`): a global
view squashed to the tower's size plus the tiles of the best grid canvas, V_i = 1 + rows*cols views.
The ViT encodes every view; then, instead of LLaVA-NeXT's unpadding and newline packing
(connectors/anyres.py), a Perceiver Resampler (connectors/perceiver.py) turns EACH view's features
into L tokens on its own, and an image's tokens are its views' tokens concatenated:

    views [sum V_i, P, D] --perceiver, one view at a time--> [sum V_i, L, D] --split per image-->
    [[V_0 * L, D], [V_1 * L, D], ...]      (xGen-MM: L = 128 per view)

so a large image costs (1 + tiles) * L tokens however many patches its views have, and no view's
tokens depend on another view's pixels.
"""
from __future__ import annotations

import torch
from torch import nn

from ocellus.data.image_tiling import _check_pinpoints, anyres_num_views, tokens_per_image
from ocellus.models.connectors.anyres import real_views, view_counts
from ocellus.models.connectors.perceiver import PerceiverResampler


class TokenSampler(nn.Module):
    """(view features [sum V_i, P, D], image_sizes [N, 2]) -> N sequences [V_i * num_latents, D].

    grid_pinpoints: candidate canvases (H, W), multiples of tile_size (as image_grid_pinpoints);
    tile_size: the vision tower's input side (every view is tile_size x tile_size)."""

    def __init__(self, perceiver: PerceiverResampler, grid_pinpoints, tile_size: int):
        super().__init__()
        self.grid_pinpoints = [tuple(int(x) for x in p) for p in (grid_pinpoints or [])]
        _check_pinpoints(self.grid_pinpoints, tile_size)
        self.tile_size = tile_size
        self.perceiver = perceiver

    def num_views(self, image_size: tuple[int, int]) -> int:
        """The global view + the tiles of the canvas chosen for an image of (H, W)."""
        return anyres_num_views(image_size, self.grid_pinpoints, tile_size=self.tile_size)

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        """LLM tokens of one image: what a processor expands its placeholder to (the same function counts)."""
        return tokens_per_image("token_sampler", image_size=image_size, grid_pinpoints=self.grid_pinpoints,
                                tile_size=self.tile_size, num_latents=self.perceiver.num_latents)

    def select_views(self, pixel_values: torch.Tensor, image_sizes) -> torch.Tensor:
        """pixel_values [N, V, 3, H, W] (zero-padded to the batch's largest V, as preprocess_anyres
        returns them) or views already flattened [sum V_i, 3, H, W] (xGen-MM's processor) -> the real
        views of every image in order [sum V_i, 3, H, W]."""
        return real_views(pixel_values, image_sizes, self.num_views)

    def forward(self, features: torch.Tensor, image_sizes) -> list[torch.Tensor]:
        counts = view_counts(features, image_sizes, self.num_views, "token sampler")[1]
        tokens = self.perceiver(features)                                  # [sum V_i, L, D] each view alone
        return [t.flatten(0, 1) for t in tokens.split(counts)]             # N x [V_i * L, D]
