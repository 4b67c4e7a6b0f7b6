"""Pixel shuffle + MLP (InternVL-1.5 / SmolVLM / Idefics3): fold each r x r block of patch
features into one token with r^2 times the channels, cutting the token count by r^2 before the
MLP. InternVL calls r = 1/downsample_ratio (2 for 0.5).
"""
import torch
from torch import nn

from ocellus.errors import InputError
from ocellus.nn.mlp import activation


def pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """[N, P, C] with P = h*w (square grid) -> [N, P / r^2, C * r^2]; channel blocks ordered by
    (row offset, column offset) within each r x r window."""
    N, P, C = x.shape
    h = int(round(P ** 0.5))
    if h * h != P or h % r:
        raise InputError(f"pixel shuffle needs a square patch grid divisible by {r}, got {P} patches")
    x = x.view(N, h // r, r, h // r, r, C)                 # [N, h/r, r, w/r, r, C]
    x = x.permute(0, 1, 3, 2, 4, 5)                        # [N, h/r, w/r, r, r, C]
    return x.reshape(N, (h // r) ** 2, r * r * C)          # [N, P/r^2, r^2 C]


class PixelShuffleProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, ratio: int = 2, act: str = "gelu"):
        super().__init__()
        self.ratio = ratio
        self.norm = nn.LayerNorm(in_dim * ratio * ratio)
        self.linear_1 = nn.Linear(in_dim * ratio * ratio, out_dim)
        self.act = activation(act)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # [N, P, Dv] -> [N, P / r^2, D]
        return self.linear_2(self.act(self.linear_1(self.norm(pixel_shuffle(x, self.ratio)))))
