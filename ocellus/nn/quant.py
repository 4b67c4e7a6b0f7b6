"""Weight-only int8: per-output-channel symmetric int8 weights, activations in the compute dtype.

Decoding one token at a time is bound by reading every weight once per token, so a weight read as one
byte instead of two (bf16) or four (fp32) is the speed-up. `Int8Linear` holds

    weight        int8 [out, in]     round(W / scale[:, None]), clamped to [-127, 127]
    weight_scale  fp32 [out]         max |W[o, :]| / 127  (one scale per output channel)
    bias          compute dtype [out] or None

and computes y = (x @ weight.T) * scale + bias. On CPU, by activation dtype:
- float32: fbgemm's dynamic int8 linear (`quantized.linear_dynamic` over the same codes and scales, packed once
  per weight version): x is quantized per call, per tensor, to 7-bit unsigned codes (asymmetric; `reduce_range`:
  on AVX2 without VNNI the u8 x s8 pair sums of 8-bit codes saturate int16, measured 10% error vs 0.9%), the
  products are summed exactly in int32 and scaled back: `dynamic_int8_reference` writes it out. llama.cpp's q8_0
  quantizes activations too. The fastest path here (AVX2): batch-1 decode 1.7x bf16 where bf16 activations
  through the kernel below gave 1.1x (docs/BENCHMARKS.md).
- bfloat16: `aten._weight_int8pack_mm` (int8 weight, per-channel scales, bf16 activations, fp32 accumulation).
Elsewhere (CUDA, fp16, input widths the kernels cannot take, and whenever autograd needs a gradient for x): the
same product written out with the weight dequantised. The state_dict names (`weight`, `weight_scale`, `bias`) are what a quantized
checkpoint holds (hub/checkpoint.py writes them with a `quantization_config` in config.json).

Inference only: the int8 weight is a buffer, never trained.
"""
from __future__ import annotations

import fnmatch
import warnings

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError

QUANT_METHOD = "ocellus_int8"
QMAX = 127


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] (any float dtype) -> (int8 [out, in], fp32 scale [out]): symmetric, per output channel,
    round to nearest. An all-zero row gets scale 1 (its codes are 0)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 [out, in] and scale [out] -> the float weight they stand for, in `dtype`."""
    return (q.float() * scale.float()[:, None]).to(dtype)


_INT8PACK = hasattr(torch.ops.aten, "_weight_int8pack_mm")
# fbgemm's dynamic int8 linear (x86 CPUs): torch's quantized engines list it. Read once: the list is rebuilt on
# every read of supported_engines, and the kernel choice below is made on every int8 matmul (85 a decoded token)
_DYNAMIC = "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


def int8_kernel_available(device: torch.device | str = "cpu") -> bool:
    return _INT8PACK and torch.device(device).type == "cpu"


def dynamic_kernel_available(device: torch.device | str = "cpu") -> bool:
    """fbgemm's dynamic int8 linear (x86 CPUs)."""
    return _DYNAMIC and torch.device(device).type == "cpu"


def kernel_for(x: torch.Tensor, in_features: int) -> str | None:
    """The CPU kernel an int8 matmul of activations `x` (no gradient wanted) runs, by x's dtype (module docstring):
    "int8pack" (bf16: aten._weight_int8pack_mm), "dynamic" (fp32: fbgemm's dynamic int8 linear), "int8pack_bf16"
    (fp32 without fbgemm: the input rounded to bf16 for int8pack), None: none here (the product written out).
    int8pack reads the input dimension in blocks of 8: other widths give wrong sums or crash (torch 2.13)."""
    if x.device.type != "cpu":
        return None
    if x.dtype == torch.float32 and _DYNAMIC:
        return "dynamic"
    if _INT8PACK and in_features % 8 == 0:
        return "int8pack" if x.dtype == torch.bfloat16 else "int8pack_bf16" if x.dtype == torch.float32 else None
    return None


DYNAMIC_QMAX = 127      # reduce_range: 7-bit activation codes (see the module docstring)


def dynamic_int8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What the float32 CPU path computes, written out: x [N, in] fp32 quantized per tensor to codes in
    [0, 127] (scale_x = (max(x, 0) - min(x, 0)) / 127, zero point round(-min / scale_x)), times the int8
    weight codes summed exactly, then scaled by scale_x * scale [out]."""
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    sx = (hi - lo) / DYNAMIC_QMAX if hi > lo else 1.0
    zp = min(max(round(-lo / sx), 0), DYNAMIC_QMAX)
    xq = torch.clamp(torch.round(x / sx) + zp, 0, DYNAMIC_QMAX) - zp                # [N, in] integers
    acc = xq.double() @ q.double().T                                                   # exact int sums
    return (acc * sx * scale.double()).float()


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 with one fp32 scale per output channel (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype | None = None,
                 device=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None
        self._scale_cache: tuple | None = None   # (dtype, device, version) -> the scale in the activation dtype
        self._packed: tuple | None = None        # (versions, data pointers) -> fbgemm's packed weight

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  dtype=linear.weight.dtype, device=linear.weight.device)
        q, scale = quantize_weight(linear.weight)
        new.weight.copy_(q)
        new.weight_scale.copy_(scale)
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach())
        return new

    def _scale_as(self, x: torch.Tensor) -> torch.Tensor:
        s = self.weight_scale      # an in-place update (load_state_dict) bumps its version: recast then
        key = (x.dtype, x.device, -1 if s.is_inference() else s._version, s.data_ptr())
        if self._scale_cache is None or self._scale_cache[0] != key:
            self._scale_cache = (key, self.weight_scale.to(device=x.device, dtype=x.dtype))
        return self._scale_cache[1]

    def _packed_weight(self):
        """fbgemm's packed form of (weight, weight_scale), remade after an in-place update (load_state_dict)."""
        w, s = self.weight, self.weight_scale
        key = tuple(-1 if t.is_inference() else t._version for t in (w, s)) + (w.data_ptr(), s.data_ptr())
        if self._packed is None or self._packed[0] != key:
            with warnings.catch_warnings():     # torch marks its quantized tensors deprecated; pinned torch has them
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(
                    w, s.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
            self._packed = (key, torch.ops.quantized.linear_prepack(qw, None))
        return self._packed[1]

    def _apply(self, fn, recurse=True):
        """.to(dtype) / .half() cast float buffers: the scales stay fp32 (they are the truth the codes
        stand for); device moves apply to them as to everything else."""
        scale = self.weight_scale
        super()._apply(fn, recurse)
        if self.weight_scale.dtype != torch.float32:
            self.weight_scale = scale.to(device=self.weight_scale.device)
        return self

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_weight(self.weight, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        kind = None if torch.is_grad_enabled() and x.requires_grad else kernel_for(x, self.in_features)
        if kind == "int8pack":
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self._scale_as(x))
        elif kind == "dynamic":
            y = torch.ops.quantized.linear_dynamic(x2.contiguous(), self._packed_weight(), True)   # reduce_range
        elif kind == "int8pack_bf16":
            # no fbgemm: the int8pack kernel's fp32 path is 6-20x slower than its bf16 one (AVX2, torch 2.13),
            # so the matmul input is rounded to bf16, accumulation stays fp32, the output is fp32 again
            xb = x2.to(torch.bfloat16)
            y = torch.ops.aten._weight_int8pack_mm(xb, self.weight, self._scale_as(xb)).to(x.dtype)
        else:   # the same product written out: x @ (q * s).T = (x @ q.T) * s
            y = F.linear(x2, self.weight.to(x.dtype)) * self._scale_as(x)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def decoder_scope(model: nn.Module) -> str:
    """The module path whose Linear layers int8 quantization covers by default: a VLM's `language_model`
    (the decoder reads its weights once per generated token; the vision tower and connector run once per
    image and stay in the compute dtype), else the whole model ("")."""
    return "language_model" if isinstance(getattr(model, "language_model", None), nn.Module) else ""


def quantize_targets(model: nn.Module, skip: tuple[str, ...] = (), lm_head: bool = True) -> list[str]:
    """Qualified names of the nn.Linear layers `quantize_model` would replace: those under `decoder_scope`,
    minus names matching any `skip` pattern (fnmatch on the full module path), minus `*lm_head` unless lm_head."""
    scope = decoder_scope(model)
    patterns = tuple(skip) + (() if lm_head else ("lm_head", "*.lm_head"))
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):     # nn.Linear and its subclasses (PackedLinear)
            continue
        if scope and not name.startswith(scope + "."):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        names.append(name)
    return names


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def quantize_model(model: nn.Module, skip: tuple[str, ...] = (), lm_head: bool = True) -> nn.Module:
    """In place: each nn.Linear named by `quantize_targets` becomes an Int8Linear (its float weight is
    dropped; a tied lm_head keeps the embedding as it was and gets an int8 copy of its own). Returns the model."""
    for name, mod in model.named_modules():
        if type(mod).__name__ == "LoRALinear":
            raise ConfigError(f"{name} carries a LoRA adapter: merge it (nn.lora.merge_lora) before quantizing")
    names = quantize_targets(model, skip=skip, lm_head=lm_head)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear layer to quantize")
    for name in names:
        mod = model.get_submodule(name)
        if not mod.weight.is_floating_point():
            raise ConfigError(f"{name}.weight is {mod.weight.dtype}: int8 quantization needs a float weight")
        replace_module(model, name, Int8Linear.from_linear(mod))
    return model


def quantized_modules(model: nn.Module) -> list[str]:
    return [name for name, mod in model.named_modules() if isinstance(mod, Int8Linear)]


def quantization_config(model: nn.Module) -> dict:
    """The config.json entry a quantized checkpoint carries."""
    return {"quant_method": QUANT_METHOD, "bits": 8, "group": "per_channel", "symmetric": True,
            "scale_dtype": "float32", "modules": quantized_modules(model)}
