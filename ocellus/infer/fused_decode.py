"""Batch-1 CPU decoding with the whole step compiled: every layer, the final norm and the lm_head in one call.

Run layer by layer, a decode step of a small decoder spends a quarter of its time outside the weight reads (~25
small ATen ops a layer, each a dispatch, an allocation and a thread hand-off; docs/BENCHMARKS.md, issue 21).
`attach_fused_decode(model)` gives each pre-norm decoder in `model` (models/text/decoder.py DecoderLM: its
`fused_decode` hook) a FusedDecode: at batch 1, one new token, a KV cache (a StaticKVCache with no padding mask,
or the batch engine's one-slot SlotKVCache), no per-layer hook (`before_layer`) and no gradient wanted, the
decoder's forward hands the token's embedding to the compiled step (kernels/decode_step.cpp), which reads the
model's own weights where they are (no copy) and writes the cache as the layers would. Anything else runs the
layers as written. prepare_decode (infer/prepack.py) attaches it with the compiled GEMV (the default at batch 1 on
CPU); `detach_fused_decode` takes it off.

What it runs: float32 or bfloat16 activations; weights all plain float linears of that dtype (nn.Linear or the
GEMV's GemvLinear) or all int8 (nn/quant.py Int8Linear: codes with a float32 scale per row, the activations
unquantized: the compiled GEMV's int8 form, infer/prepack_int8.py "gemv"); not LoRA; SwiGLU with SiLU, RMSNorm,
RoPE over the first R <= head_dim dims (any frequency scaling: the cos / sin come from the model's own rotary
embedding each step); no q/k norm (a Qwen3 decoder runs its layers as written). An int8 decoder it runs is left
unpacked (prepare_decode packs the other int8 layers). The step checks before each call that every module it read
is still in place (a LoRA injection or quantization replaces them) and, in C++, that every weight keeps its dtype,
shape and layout; otherwise it detaches itself and the layers run as written.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.infer.gemv_decode import GemvLinear
from ocellus.infer.prepack_int8 import PackedInt8Linear
from ocellus.infer.slot_cache import SlotKVCache
from ocellus.kernels.gemv import kernel
from ocellus.nn.attention import Attention
from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.mlp import SwiGLU
from ocellus.nn.norms import RMSNorm
from ocellus.nn.quant import Int8Linear

DTYPES = (torch.float32, torch.bfloat16)
FLOAT = (nn.Linear, GemvLinear)
INT8 = (Int8Linear, PackedInt8Linear)        # a packed one unpacks when its codes are read


def _layer_linears(layer: nn.Module) -> list[nn.Module]:
    """A layer's linears in the step's order (decode_step.cpp's slots): q, k, v, o, gate, up, down."""
    a, m = layer.self_attn, layer.mlp
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]


def _linears(model: nn.Module) -> list[nn.Module]:
    """Every linear the step reads: each layer's, then the lm_head."""
    return [lin for layer in model.layers for lin in _layer_linears(layer)] + [model.lm_head]


def _why_not(model: nn.Module) -> str | None:
    """Why the compiled step cannot run `model` (a DecoderLM), None when it can."""
    layers = list(model.layers)
    if not layers or any(type(layer) is not model.fused_layer for layer in layers):
        return "its layers are not all the plain pre-norm decoder layer"
    if model.lm_head.bias is not None or type(model.norm) is not RMSNorm:
        return "its lm_head has a bias or its final norm is not RMSNorm"
    for i, layer in enumerate(layers):
        a, m = layer.self_attn, layer.mlp
        if type(a) is not Attention or type(m) is not SwiGLU or m.act is not F.silu:
            return f"layer {i}: not GQA attention + SwiGLU (SiLU)"
        if a.q_norm is not None or a.k_norm is not None:    # decode_step.cpp has no slot for them
            return f"layer {i}: q/k norm (Qwen3), which the compiled step does not compute"
        if type(layer.input_layernorm) is not RMSNorm or type(layer.post_attention_layernorm) is not RMSNorm:
            return f"layer {i}: not RMSNorm"
    # types before weights: reading `.weight` of a packed layer (int8, oneDNN) unpacks it
    linears, dtype = _linears(model), model.norm.weight.dtype
    if dtype not in DTYPES:
        return f"activations in {dtype}"
    kinds = {FLOAT if type(lin) in FLOAT else INT8 if type(lin) in INT8 else None for lin in linears}
    if len(kinds) != 1 or None in kinds:
        return "its linears are not all plain float or all int8 (LoRA, a packed or another layer)"
    want = dtype if kinds == {FLOAT} else torch.int8
    if any(lin.weight.dtype != want or lin.weight.device.type != "cpu" for lin in linears):
        return f"a linear whose weight is not {want} on CPU"
    if any(lin.bias is not None and lin.bias.dtype != dtype for lin in linears):
        return f"a bias not in {dtype}"
    norms = [n for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm)] + [model.norm]
    if any(n.weight.dtype != dtype for n in norms):
        return f"norm weights not in {dtype}"
    if len({n.eps for n in norms}) > 1:
        return "norms with different eps"
    return None


def _bias(lin: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The linear's bias, or an empty tensor (the step's "none")."""
    return torch.empty(0, dtype=dtype) if lin.bias is None else lin.bias


def _scale(lin: nn.Module) -> torch.Tensor:
    """An int8 linear's float32 scale per output row, or an empty tensor for a float linear."""
    return lin.weight_scale if isinstance(lin, Int8Linear) else torch.empty(0)


class FusedDecode:
    """A DecoderLM's `fused_decode` hook: (x [1, 1, D], position_ids [1, 1], cache) -> (hidden [1, 1, D],
    logits [1, 1, V]) through the compiled step, or None (the caller runs the layers as written)."""

    def __init__(self, model: nn.Module):
        self.model = model
        dtype = self.dtype = model.norm.weight.dtype           # the activations'
        self.watched = []                   # (parent's _modules, name, module): each must stay in place
        layers = []
        for layer in model.layers:
            a, m = layer.self_attn, layer.mlp
            for parent, names in ((layer, ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")),
                                  (a, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                  (m, ("gate_proj", "up_proj", "down_proj"))):
                self.watched += [(parent._modules, n, parent._modules[n]) for n in names]

            q, k, v, o, gate, up, down = lins = _layer_linears(layer)
            layers.append([layer.input_layernorm.weight, q.weight, k.weight, v.weight,
                           *(_bias(x, dtype) for x in (q, k, v)), o.weight, _bias(o, dtype),
                           layer.post_attention_layernorm.weight, gate.weight, up.weight, down.weight,
                           *(_bias(x, dtype) for x in (gate, up, down))] + [_scale(x) for x in lins])
        self.watched += [(model._modules, n, model._modules[n]) for n in ("norm", "lm_head")]
        a = model.layers[0].self_attn
        self.step = kernel(required=True).DecodeStep(layers, model.norm.weight, model.lm_head.weight,
                                                     _scale(model.lm_head), a.num_heads, a.num_kv_heads, a.head_dim,
                                                     float(model.norm.eps))

    def __call__(self, x: torch.Tensor, position_ids: torch.Tensor, cache, attention_mask=None):
        model = self.model
        start = self._first_key(cache, attention_mask)
        if start is None or model.training or torch.is_grad_enabled() or x.dtype != self.dtype \
                or cache.k[0].dtype != self.dtype or cache.length >= cache.max_len:   # (the layers say what is wrong)
            return None
        if any(d.get(n) is not m for d, n, m in self.watched):
            return self._off()
        cos, sin = model.rotary_emb(position_ids, dtype=x.dtype)                   # [1, 1, R]
        try:
            k, v = (cache.k, cache.v) if type(cache) is StaticKVCache else \
                ([t[:1] for t in cache.k], [t[:1] for t in cache.v])          # a slot cache: its live row 0
            h, logits = self.step.step(x.contiguous(), cos.contiguous(), sin.contiguous(), k, v, cache.length, start)
        except RuntimeError as e:
            if "stale decode step" not in str(e):
                raise
            return self._off()
        return h, logits

    @staticmethod
    def _first_key(cache, mask) -> int | None:
        """The first cached key the token attends to, or None when the step cannot run this cache and mask: a
        StaticKVCache with no padding (0), or a one-row SlotKVCache (the batch engine with one slot,
        infer/slot_cache.py) whose mask is its own (padding, then its row's tokens from length - fill)."""
        if type(cache) is StaticKVCache:
            return 0 if mask is None or bool(mask.all()) else None
        if type(cache) is not SlotKVCache or cache.active != 1 or cache.deltas is not None:
            return None
        start = cache.length - cache.fill[0]
        if mask is None:
            return start
        own = mask.shape == (1, cache.length + 1) and bool(mask[0, start:].all()) and not bool(mask[0, :start].any())
        return start if own else None

    def __deepcopy__(self, memo):
        """Reached through the decoder's hook: the copy runs its layers until its own attach_fused_decode."""
        return None

    def _off(self):
        """A module was replaced or a weight changed form since the plan was made: the layers run from now on."""
        self.model.fused_decode = None
        return None


def attach_fused_decode(model: nn.Module) -> int:
    """Give every decoder in `model` that the compiled step can run its FusedDecode (replacing an older one: the
    weights are read again). -> how many were attached (0 when the kernel cannot be built here)."""
    if kernel() is None:
        return 0
    n = 0
    for m in model.modules():
        if getattr(type(m), "fused_layer", None) is not None:       # a decoder with the hook (DecoderLM)
            m.fused_decode = None
            if not m.training and _why_not(m) is None:
                m.fused_decode = FusedDecode(m)
                n += 1
    return n


def fused_modules(model: nn.Module) -> set[int]:
    """ids of the modules the attached steps read (prepare_decode leaves their int8 layers unpacked)."""
    return {id(m) for f in model.modules() if isinstance(getattr(f, "fused_decode", None), FusedDecode)
            for _, _, m in f.fused_decode.watched}


def detach_fused_decode(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(getattr(m, "fused_decode", None), FusedDecode):
            m.fused_decode = None
    return model
