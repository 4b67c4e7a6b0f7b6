"""Prepacked linear weights for CPU decoding (oneDNN's blocked layout): the default decode path.

Decoding a small batch on a CPU is bound by streaming every weight matrix once per token. oneDNN
reads a weight reordered once into its own blocked layout faster than the plain row-major tensor a
`F.linear` call hands it (this is what IPEX's `optimize()` and inductor's weight freezing do), and
one call on a stacked matrix costs less than several on its parts (per-call overhead on small
matrices): `prepack_linears(model, batch)` packs each Attention's q|k|v as one matrix and each
SwiGLU's gate|up as one (nn/attention.py, nn/mlp.py call them through their `fused_*` hook and
split the output), and every other nn.Linear alone. `generate`, `stream` and the batch engine call
it by default (`prepare_decode`; GenerationConfig.prepack=False, `--no-prepack` turn it off).

One copy: while packed, the oneDNN tensor is the truth. Each member's Parameter stays registered
(the same object: an optimizer built before keeps working) but holds a one-element NaN expanded to
its shape (dtype, device and shape kept; any read of it outside our forward gives NaN, never a
silently stale number). The plain weight comes back from the packed one exactly (`to_dense`):
  - `state_dict()` / `ocellus.save` write the dense weight (keep_vars=True unpacks and gives the Parameter);
  - `layer.weight` (LoRA injection, quantization, anything reading the attribute) unpacks first;
  - `train()`, a grad-enabled forward that needs the weight's gradient or the input's, `.to()` and the
    other `_apply`s, `load_state_dict` and `deepcopy` unpack first;
  - a weight replaced behind our back (`layer.weight.data = t`) is seen and unpacks (t kept as the truth).
Unpacked layers run plain F.linear until the next `prepack_linears` (the next `generate`) packs them again.
A weight shared by two modules (lm_head tied to embed_tokens) stays plain: the embedding needs its rows.
An int8 model's layers (nn/quant.py Int8Linear) are fused and packed the same way, one copy, by
infer/prepack_int8.py (fbgemm's packed matrix for float32 activations, the stacked codes for bfloat16).
"""
from __future__ import annotations


import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError
from ocellus.infer.fused_decode import attach_fused_decode, detach_fused_decode, fused_modules
from ocellus.infer.gemv_decode import attach_gemv, detach_gemv
from ocellus.infer.packed_member import fused_bias, fusion_plan, pack_groups, PackedMember, unpack_all
from ocellus.infer.prepack_int8 import int8_groups, pack_int8_linears, unpack_int8_linears
from ocellus.kernels.gemv import kernel
from ocellus.nn.attention import Attention
from ocellus.nn.mlp import SwiGLU

# the projections fused into one packed matrix: module type -> (hook attribute, member names)
FUSED = {Attention: ("fused_qkv", ("q_proj", "k_proj", "v_proj")), SwiGLU: ("fused_gate_up", ("gate_proj", "up_proj"))}


def prepack_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def prepack_supports(dtype: torch.dtype) -> bool:
    """Whether this CPU can run oneDNN's packed kernels in `dtype`: bfloat16 needs AVX512 (bw/vl/dq) or
    AVX-NE-CONVERT, which an AVX2-only CPU lacks (oneDNN then refuses to reorder the weight)."""
    if dtype == torch.bfloat16:
        return prepack_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return prepack_available() and dtype == torch.float32


def _placeholder(p: torch.Tensor) -> torch.Tensor:
    """What a packed member's Parameter holds: one NaN seen as p's shape (4 bytes, not a copy)."""
    return torch.full((), float("nan"), dtype=p.dtype, device=p.device).expand(p.shape)


class PackedGroup:
    """Linears that read the same input, their weights stacked along the output ([sum out, in]) in one
    oneDNN-packed matrix: the only copy of those weights while packed. `owner.<hook>` (when given) is
    set to this group, so that the owner runs one matmul and splits the output itself."""

    def __init__(self, members, batch_size: int, owner: nn.Module | None = None, hook: str | None = None):
        self.members = tuple(members)
        self.sizes = [m.out_features for m in self.members]
        self.owner, self.hook, self.batch_size = owner, hook, int(batch_size)
        self.packed = None
        self._pack()

    # -- states ------------------------------------------------------------------------------------
    def _pack(self) -> None:
        with torch.inference_mode(False), torch.no_grad():   # restored weights must be able to train
            ws = [m._parameters["weight"] for m in self.members]
            w = ws[0] if len(ws) == 1 else torch.cat(ws)                               # [sum out, in]
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.batch_size)
            del w
            self.holders = [_placeholder(p) for p in ws]
            for i, (m, p, h) in enumerate(zip(self.members, ws, self.holders)):
                p.data = h                                 # the plain storage is released here
                m.__class__, m.group, m.index = PackedLinear, self, i
        self.bias, self._bias_key = None, None
        if self.owner is not None:
            setattr(self.owner, self.hook, self)

    def unpack(self) -> None:
        """The plain weights back in their own Parameters (exactly: to_dense), the members nn.Linear again."""
        if self.packed is None:
            return
        with torch.inference_mode(False), torch.no_grad():
            dense = self.packed.to_dense()                                               # [sum out, in]
            parts = [dense] if len(self.members) == 1 else [d.clone() for d in dense.split(self.sizes)]
            for m, h, d in zip(self.members, self.holders, parts):
                p = m._parameters["weight"]
                if p.data_ptr() == h.data_ptr():           # else replaced while packed: the new data is the truth
                    p.data = d
                m.__class__ = nn.Linear
                del m.group, m.index
        self.packed, self.holders, self.bias = None, None, None
        if self.owner is not None:
            setattr(self.owner, self.hook, None)         # set, not deleted: deepcopy may be walking its __dict__

    def dense(self, index: int) -> torch.Tensor:
        """Member `index`'s weight [out, in], a tensor of its own (the packed one is unchanged)."""
        start = sum(self.sizes[:index])
        return self.packed.to_dense()[start:start + self.sizes[index]].clone()

    # -- inference ---------------------------------------------------------------------------------
    def _must_unpack(self, x: torch.Tensor) -> bool:
        """A forward that autograd records needs the plain weights (the packed op has no backward); a
        weight whose Parameter no longer holds our placeholder was replaced and is the truth now."""
        ws = [m._parameters["weight"] for m in self.members]
        if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in ws)):
            return True
        return any(w.data_ptr() != h.data_ptr() for w, h in zip(ws, self.holders))

    def _fused_bias(self):
        """The members' biases as one [sum out] tensor (a small copy, remade when one changes)."""
        return fused_bias(self, [m._parameters["bias"] for m in self.members])

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., sum out]: one call on the packed matrix."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self._fused_bias(), "none", [], "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The owner's hook: the members' outputs side by side [..., sum out]."""
        if self._must_unpack(x):
            self.unpack()
            return torch.cat([m(x) for m in self.members], dim=-1)
        return self.run(x)

    def __deepcopy__(self, memo):
        """Reached through the owner's hook: the members' own deepcopy unpacks (the copy is a plain model)."""
        self.unpack()
        return None


class PackedLinear(PackedMember, nn.Linear):
    """An nn.Linear whose weight lives in a PackedGroup (its class while packed; nn.Linear again after)."""

    REAL = ("weight",)
    group: PackedGroup
    index: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        if g._must_unpack(x):
            g.unpack()
            return F.linear(x, self.weight, self.bias)
        y = g.run(x)
        if len(g.sizes) == 1:
            return y
        start = sum(g.sizes[:self.index])                # called alone (kept-row attention): its slice
        return y[..., start:start + g.sizes[self.index]].contiguous()

    def _write_dense(self, destination, prefix) -> None:
        destination[prefix + "weight"] = self.group.dense(self.index)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self._parameters['bias'] is not None}, packed for batch {self.group.batch_size}"
                + (f" with {len(self.group.sizes) - 1} more" if len(self.group.sizes) > 1 else ""))


def _shared_parameters(model: nn.Module) -> set[int]:
    """ids of Parameters registered under more than one name (a tied lm_head and embedding)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, n in seen.items() if n > 1}


def _plan(model: nn.Module, strict: bool):
    """[(members, owner, hook)]: the groups to pack. A Linear is packed when it is a plain nn.Linear (not LoRA,
    int8 or another subclass) whose weight no other module shares, on CPU in a dtype oneDNN packs here;
    an Attention's q/k/v and a SwiGLU's gate/up are fused when all of them are, alike (dtype, input,
    all or none with a bias) and without hooks of their own (a fused call would skip them). strict: a weight
    that cannot be packed (dtype, device) is an error, else it stays plain."""
    shared = _shared_parameters(model)

    def packable(m) -> bool:
        if type(m) not in (nn.Linear, PackedLinear):
            return False
        p = m._parameters["weight"]
        if id(p) in shared:
            return False
        problem = (f"prepacked weights are a CPU (oneDNN) layout; this weight is on {p.device}" if p.device.type != "cpu"
                   else f"prepacking supports float32 and bfloat16 weights, this one is {p.dtype}"
                   if p.dtype not in (torch.float32, torch.bfloat16)
                   else f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no oneDNN bfloat16 kernels (they "
                        "need AVX512 or AVX-NE-CONVERT): decode bfloat16 without prepacking, or load the model in "
                        "float32 to prepack it" if not prepack_supports(p.dtype) else None)
        if problem and strict:
            raise ConfigError(problem)
        return problem is None

    def alike(members) -> bool:
        first = members[0]._parameters
        return all(m._parameters["weight"].dtype == first["weight"].dtype and m.in_features == members[0].in_features
                   and (m._parameters["bias"] is None) == (first["bias"] is None) for m in members)
    return fusion_plan(model, FUSED, packable, alike)


def prepack_linears(model: nn.Module, batch_size: int = 1, strict: bool = True) -> nn.Module:
    """Pack `model`'s linear weights (in place) for `batch_size` rows per call (the decode batch): fused
    q|k|v and gate|up, every other plain nn.Linear alone, each the only copy of its weights. Packed
    already for this batch the same way: nothing to do. Returns the model. strict=False (the default
    decode path): layers oneDNN cannot pack here (bfloat16 without AVX512, float16, not on CPU) stay plain.
    Int8Linears: fused and packed for their int8 kernel (infer/prepack_int8.py), with the same strictness."""
    pack_int8_linears(model, FUSED, strict)
    if not prepack_available():
        raise ConfigError("this PyTorch build has no oneDNN (mkldnn) linear kernels to prepack for")
    pack_groups(_plan(model, strict), PackedLinear, lambda g: g.batch_size == int(batch_size),   # for this batch
                lambda members, owner, hook: PackedGroup(members, batch_size, owner, hook))
    return model


def unpack_linears(model: nn.Module) -> nn.Module:
    """Every packed layer of `model` back to a plain nn.Linear (Int8Linear) holding its weight. Returns the model."""
    unpack_int8_linears(model)
    return unpack_all(model, PackedLinear)


def prepare_decode(model: nn.Module, batch_size: int, prepack: bool = True, gemv: bool | None = None) -> None:
    """The default decode path (generate, stream, the batch engine) for a model in eval mode, for `batch_size`
    rows: at batch 1 the float linears run the compiled GEMV on their own weights (infer/gemv_decode.py) where
    it builds here, else (and at batch > 1) prepacked fused weights on CPU; int8 layers pack for their kernel
    either way. gemv: None the kernel where it builds, True the kernel at batch 1 (int8 layers too: exact float
    activations instead of fbgemm's quantized ones) or ConfigError saying why not, False never. prepack=False
    decodes with plain weights (unpacks, no kernel). A model in training mode is left as it is (its next training step would unpack again; the GEMV steps aside for a gradient)."""
    if prepack and not model.training and batch_size == 1 and gemv is not False and kernel(required=bool(gemv)):
        unpack_all(model, PackedLinear)                  # the kernel reads the plain weights in place
        attach_gemv(model, FUSED)
        attach_fused_decode(model)                       # a plain decoder's whole step in one call (float or int8)
        # the other int8 layers: packed for their kernels (through the GEMV: asked for only)
        pack_int8_linears(model, FUSED, strict=False, gemv=bool(gemv), skip=fused_modules(model))
        return
    detach_gemv(model)
    detach_fused_decode(model)
    if not prepack:
        unpack_linears(model)
    elif not model.training and prepack_available():
        prepack_linears(model, batch_size, strict=False)
    elif not model.training:
        pack_int8_linears(model, FUSED, strict=False)     # int8 layers need no oneDNN


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights hold now: every parameter and buffer storage once, plus the packed
    matrices (oneDNN's own size of each) and packed int8 groups (prepack_int8.Int8Group.nbytes). A packed
    layer's Parameter (an int8 layer's buffers) holds a 4-byte (1-byte) placeholder."""
    storages, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        s = t.untyped_storage()
        if s.data_ptr() not in storages:
            storages.add(s.data_ptr())
            total += s.nbytes()
    groups = {id(m.group): m.group for m in model.modules() if isinstance(m, PackedLinear)}
    return (total + sum(int(torch.ops.mkldnn._nbytes(g.packed)) for g in groups.values())
            + sum(g.nbytes() for g in int8_groups(model)))
