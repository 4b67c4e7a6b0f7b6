"""Prepacked linear weights for CPU inference (oneDNN's blocked layout).

Decoding a small batch on a CPU is bound by streaming every weight matrix once per token. oneDNN
reads a weight reordered once into its own blocked layout faster than the plain row-major tensor a
`F.linear` call hands it (which it must walk, or reorder, on every call): this is what IPEX's
`optimize()` and inductor's weight freezing do. `prepack_linears(model)` swaps every `nn.Linear` of
a model for a `PackedLinear` holding the same Parameter objects (state_dict, save and LoRA see
nothing new) plus the packed copy, made for the batch size decoding will run at.

The packed copy is a cache of the weight, never the truth: a forward with autograd on uses the plain
weight, and a weight changed in place (an optimizer step, load_state_dict) is repacked on the next
call — its tensor version counter says so — so a prepacked model can never run stale weights.
Costs a second copy of every weight in memory.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError


def prepack_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def prepack_supports(dtype: torch.dtype) -> bool:
    """Whether this CPU can run oneDNN's packed kernels in `dtype`: bfloat16 needs AVX512 (bw/vl/dq) or
    AVX-NE-CONVERT, which an AVX2-only CPU lacks (oneDNN then refuses to reorder the weight)."""
    if dtype == torch.bfloat16:
        return prepack_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return prepack_available() and dtype == torch.float32


class PackedLinear(nn.Linear):
    """nn.Linear whose inference forward reads a oneDNN-packed copy of the weight."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, batch_size: int) -> "PackedLinear":
        if linear.weight.device.type != "cpu":
            raise ConfigError(f"prepacked weights are a CPU (oneDNN) layout; this weight is on {linear.weight.device}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias        # the same Parameters: tying and saving unchanged
        new.batch_size = int(batch_size)
        new._pack()
        return new

    def _pack(self) -> None:
        with torch.no_grad():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), self.batch_size)
        self._packed_version = self.weight._version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return F.linear(x, self.weight, self.bias)           # training: the packed op has no backward
        if self.weight._version != self._packed_version:
            self._pack()                                          # updated in place since packing
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", packed for batch {self.batch_size}"


def prepack_linears(model: nn.Module, batch_size: int = 1) -> nn.Module:
    """Swap every nn.Linear of `model` (in place) for a PackedLinear packed for `batch_size` rows per
    call (the decode batch; calling again repacks for another). Returns the model. Float32 and
    bfloat16 weights on CPU only."""
    if not prepack_available():
        raise ConfigError("this PyTorch build has no oneDNN (mkldnn) linear kernels to prepack for")
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) in (nn.Linear, PackedLinear)]
    for parent, name, child in targets:      # check every weight first: a refusal leaves the model untouched
        if child.weight.dtype not in (torch.float32, torch.bfloat16):
            raise ConfigError(f"prepacking supports float32 and bfloat16 weights, {name} is {child.weight.dtype}")
        if not prepack_supports(child.weight.dtype):
            raise ConfigError(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no oneDNN bfloat16 kernels "
                              "(they need AVX512 or AVX-NE-CONVERT): decode bfloat16 without prepacking, or load "
                              "the model in float32 to prepack it")
    for parent, name, child in targets:
        if isinstance(child, PackedLinear):      # packed before: repack for this batch size
            child.batch_size = int(batch_size)
            child._pack()
        else:
            setattr(parent, name, PackedLinear.from_linear(child, batch_size))
    return model
