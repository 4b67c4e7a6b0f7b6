"""Connectors map vision features [N, P, Dv] into the language model's space [N, P', D]."""
from ocellus.models.connectors.mlp import MLPProjector
from ocellus.models.connectors.pixel_shuffle import PixelShuffleProjector, pixel_shuffle

__all__ = ["MLPProjector", "PixelShuffleProjector", "pixel_shuffle"]
