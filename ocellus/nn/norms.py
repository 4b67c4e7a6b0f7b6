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
        if not torch.is_grad_enabled():
            return self._inference(x)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """forward's numbers, bitwise, without autograd: in place where forward allocates (a decode step of a small
        model on CPU is bound by per-op costs; ~8% less CPU time per call there). F.rms_norm gives the same bits
        but runs the same kernels and more casts: no faster in a decode step."""
        dtype, xf = x.dtype, x.float()
        scale = xf.pow(2).mean(-1, keepdim=True).add_(self.eps).rsqrt_()           # [..., 1] fp32
        y = xf * scale
        return y.mul_(self.weight) if dtype == self.weight.dtype == torch.float32 else self.weight * y.to(dtype)
