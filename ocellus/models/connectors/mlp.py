"""The LLaVA projector H_v = W . Z_v (Liu et al. 2023, depth 1: one linear layer) and its
LLaVA-1.5 successor, a 2-layer MLP with GELU (Liu et al. 2023b, "Improved Baselines").
Names follow transformers' LlavaMultiModalProjector: linear_1, act, linear_2.
"""
import torch
from torch import nn

from ocellus.errors import ConfigError
from ocellus.nn.mlp import activation


class MLPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, act: str = "gelu", bias: bool = True):
        super().__init__()
        if depth not in (1, 2):
            raise ConfigError(f"projector depth must be 1 (LLaVA linear) or 2 (LLaVA-1.5 MLP), got {depth}")
        self.depth = depth
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)
        if depth == 2:
            self.act = activation(act)
            self.linear_2 = nn.Linear(out_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # [N, P, Dv] -> [N, P, D]
        x = self.linear_1(x)
        return self.linear_2(self.act(x)) if self.depth == 2 else x
