"""Batch-1 CPU decoding through the compiled GEMV (kernels/gemv.py), on the model's own weights.

At batch 1 every decoded token reads each weight matrix once, and ATen's GEMV reads it at about half the streaming
rate here (docs/BENCHMARKS.md, issue 21 "compiled GEMV"). `attach_gemv(model)` routes a model's plain float
linears through the compiled kernel, reading the Parameters where they are (no packed or stacked copy: one copy
of the weights, a tied lm_head included; nothing to unpack for saving, loading or training):
  - an Attention's q/k/v and a SwiGLU's gate/up: a GemvGroup set as the owner's `fused_*` hook (nn/attention.py,
    nn/mlp.py), one kernel call over the members' weights, the outputs side by side as the fused hooks give them;
  - every other plain nn.Linear in float32 / bfloat16 on CPU: its class becomes GemvLinear (an nn.Linear whose
    forward takes the kernel for one row).
Only one row per call (x [..., in] with one row in all) without a gradient wanted takes the kernel; anything else
(the prefill, batch > 1, training, another dtype or device) runs F.linear as before. `detach_gemv` undoes it.
prepare_decode (infer/prepack.py) attaches it for batch-1 decoding on CPU when the kernel is built (the default;
GenerationConfig.gemv=False, `--no-gemv` turn it off), else packs for oneDNN as before.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.infer.packed_member import fused_bias, fusion_plan
from ocellus.kernels.gemv import gemv, kernel

DTYPES = (torch.float32, torch.bfloat16)


def _takes(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether one call of x [..., in] against w runs the kernel: one row, CPU, w's dtype, no gradient wanted."""
    return (x.numel() == x.shape[-1] and x.dtype == w.dtype and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))


class GemvGroup:
    """Linears that read the same input (an owner's q|k|v or gate|up), run as one kernel call over their own
    weights: the owner's `hook` while attached. A member replaced in its owner since (LoRA injection, int8
    quantization) turns the hook off: the owner's layers run as they are."""

    def __init__(self, members, owner: nn.Module, hook: str, names: tuple[str, ...]):
        self.members, self.owner, self.hook, self.names = tuple(members), owner, hook, names
        self.bias, self._bias_key = None, None
        setattr(owner, hook, self)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> the members' outputs side by side [..., sum out]."""
        layers = self.owner._modules
        if any(layers.get(n) is not m for n, m in zip(self.names, self.members)):
            setattr(self.owner, self.hook, None)
            return torch.cat([layers[n](x) for n in self.names], dim=-1)
        ws = [m.weight for m in self.members]
        if not _takes(x, ws[0]) or any(w.dtype != ws[0].dtype or not w.is_contiguous() for w in ws):
            return torch.cat([m(x) for m in self.members], dim=-1)
        y = gemv(x, ws)
        b = fused_bias(self, [m.bias for m in self.members])
        return y if b is None else y + b

    def __deepcopy__(self, memo):
        """Reached through the owner's hook: the copy decodes plainly until its own attach_gemv."""
        return None


class GemvLinear(nn.Linear):
    """An nn.Linear whose one-row forward runs the compiled GEMV on its own weight (its class while attached)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if not _takes(x, w) or not w.is_contiguous():
            return F.linear(x, w, self.bias)
        y = gemv(x, [w])
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return super().extra_repr() + ", compiled GEMV at batch 1"


FUSED_HOOKS = ("fused_qkv", "fused_gate_up")


def attach_gemv(model: nn.Module, fused: dict, required: bool = False) -> bool:
    """Route `model`'s plain float32 / bfloat16 CPU linears through the compiled GEMV at one row per call (the
    module docstring); `fused`: owner type -> (hook, member names) (infer/prepack.FUSED). -> whether attached:
    False when the kernel cannot be built here (required=True: ConfigError saying why)."""
    if kernel(required=required) is None:
        return False

    def takes(m) -> bool:
        w = m._parameters.get("weight") if type(m) in (nn.Linear, GemvLinear) else None
        return w is not None and w.device.type == "cpu" and w.dtype in DTYPES

    def alike(members) -> bool:
        return all(m.weight.dtype == members[0].weight.dtype and (m.bias is None) == (members[0].bias is None)
                   for m in members)
    for members, owner, hook in fusion_plan(model, fused, takes, alike):
        if owner is None:
            members[0].__class__ = GemvLinear
        else:
            GemvGroup(members, owner, hook, fused[type(owner)][1])
    return True


def detach_gemv(model: nn.Module) -> nn.Module:
    """Every GemvLinear back to nn.Linear, every GemvGroup hook off. Returns the model."""
    for m in model.modules():
        if type(m) is GemvLinear:
            m.__class__ = nn.Linear
        for hook in FUSED_HOOKS:
            if isinstance(getattr(m, hook, None), GemvGroup):
                setattr(m, hook, None)
    return model


def gemv_attached(model: nn.Module) -> bool:
    return any(type(m) is GemvLinear or any(isinstance(getattr(m, h, None), GemvGroup) for h in FUSED_HOOKS)
               for m in model.modules())
