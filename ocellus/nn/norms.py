"""Normalisation layers. RMSNorm (Zhang & Sennrich 2019) as Llama/Qwen2 use it: statistics in
fp32, the weight multiplied after casting back to the input dtype (transformers' order, which
matters for bf16 parity)."""
import torch
from torch import nn

LayerNorm = nn.LayerNorm  # torch's fused kernel already matches every reference; no wrapper needed


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)
