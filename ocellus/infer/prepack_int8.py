"""Fused int8 weights for CPU decoding: q|k|v and gate|up as one quantized matrix each, one copy resident.

The int8 counterpart of infer/prepack.py's oneDNN groups, for a model quantized by nn/quant.py
(`ocellus.load(..., quantize="int8")`). `pack_int8_linears(model, fused)` (prepack_linears and
prepare_decode call it: the decode default) stacks each Attention's q/k/v Int8Linears and each SwiGLU's
gate/up along the output into one Int8Group (their per-channel codes [sum out, in] and fp32 scales
[sum out]), reached through the owner's `fused_*` hook, and makes every other Int8Linear a group of its own.
A group holds its weights in the form its activations' kernel reads (nn/quant.kernel_for), made once:
  - float32 ("dynamic"): fbgemm's packed matrix (`quantized.linear_prepack` of the stacked codes and scales);
  - bfloat16 ("int8pack", and "int8pack_bf16": fp32 activations where fbgemm is missing): the stacked codes,
    their scales in bf16 beside the fp32 ones;
  - "gemv" (opt-in: `gemv=True`, GenerationConfig.gemv=True at batch 1): the stacked codes and fp32 scales read by
    the compiled kernel (kernels/gemv.py) for every call, the activations unquantized (float32 sums of the codes
    times x, the scale after: the written-out product to float rounding, not fbgemm's 7-bit activation codes).
Same numbers as the members run one by one: the members read the same x, so fbgemm quantizes it to the same
per-tensor codes once instead of once per member, and every output column is the same integer sum scaled by
the same two scales (int8pack: the same fp32 sums of the same bf16 products); the fused output equals the
members' outputs side by side, bitwise. Activations of another dtype than the form's repack the group once.

One copy: while packed, the group's tensor (fbgemm's packed matrix holds no other) is the truth. Each member
(class PackedInt8Linear while packed) keeps its buffers, the same objects, holding placeholders of their
shapes: `weight` one int8 zero, `weight_scale` one NaN, so a dequantisation read past our forward gives NaN,
never a stale number. The codes and scales come back exactly (fbgemm's unpack returns them as packed):
`state_dict()` / `ocellus.save` write them, and reading `layer.weight` / `layer.weight_scale`,
`load_state_dict`, `.to()` and the other `_apply`s, `train()`, deepcopy, and a forward whose input needs a
gradient unpack first (the members are plain Int8Linears again until the next decode packs them). A buffer
replaced behind our back (`layer._buffers["weight"].data = t`) is seen and unpacks, t kept as the truth.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ocellus.errors import ConfigError
from ocellus.infer.packed_member import fused_bias, fusion_plan, pack_groups, PackedMember, unpack_all
from ocellus.kernels.gemv import gemv
from ocellus.nn.quant import Int8Linear, decoder_scope, kernel_for

BUFFERS = ("weight", "weight_scale")


def _placeholders(m: Int8Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """What a packed member's buffers hold: one int8 zero seen as [out, in], one fp32 NaN seen as [out]."""
    w, s = m._buffers["weight"], m._buffers["weight_scale"]
    return (torch.zeros((), dtype=w.dtype, device=w.device).expand(w.shape),
            torch.full((), float("nan"), dtype=s.dtype, device=s.device).expand(s.shape))


def _fbgemm_pack(codes: torch.Tensor, scale: torch.Tensor):
    with warnings.catch_warnings():     # torch marks its quantized tensors deprecated; pinned torch has them
        warnings.simplefilter("ignore", UserWarning)
        qw = torch._make_per_channel_quantized_tensor(codes, scale.double(),
                                                      torch.zeros(codes.shape[0], dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(qw, None)


class Int8Group:
    """Int8Linears that read the same input, their codes and scales stacked along the output in one matrix in
    the form `kind` (nn/quant.kernel_for) reads: the only copy of those weights while packed. `owner.<hook>`
    (when given) is set to this group, so that the owner runs one matmul and splits the output itself."""

    def __init__(self, members, kind: str, owner: nn.Module | None = None, hook: str | None = None):
        self.members = tuple(members)
        self.sizes = [m.out_features for m in self.members]
        self.in_features = self.members[0].in_features
        self.owner, self.hook = owner, hook
        self.kind, self.packed, self.codes, self.scale, self.scale_lp = None, None, None, None, None
        self.bias, self._bias_key = None, None
        with torch.inference_mode(False), torch.no_grad():
            ws = [m._buffers["weight"] for m in self.members]
            ss = [m._buffers["weight_scale"] for m in self.members]
            # a group of one keeps the member's storage (detach: a tensor of our own, since the buffer's .data
            # becomes the placeholder below)
            codes = ws[0].detach() if len(ws) == 1 else torch.cat(ws)                   # [sum out, in]
            scale = ss[0].detach() if len(ss) == 1 else torch.cat(ss)                   # [sum out] fp32
            self._hold(kind, codes.contiguous(), scale.float())
            del codes, scale
            self.holders = [_placeholders(m) for m in self.members]
            # what _must_unpack compares on every call: each member's buffer dict and its placeholders' addresses
            self._watch = [(m._buffers, hw.data_ptr(), hs.data_ptr()) for m, (hw, hs) in zip(self.members, self.holders)]
            for i, (m, w, s, (hw, hs)) in enumerate(zip(self.members, ws, ss, self.holders)):
                w.data, s.data = hw, hs                     # the plain storage is released here
                m._packed, m._scale_cache = None, None      # and the member's own fbgemm copy
                m.__class__, m.group, m.index = PackedInt8Linear, self, i
        if self.owner is not None:
            setattr(self.owner, self.hook, self)

    # -- forms -------------------------------------------------------------------------------------
    def _hold(self, kind: str, codes: torch.Tensor, scale: torch.Tensor) -> None:
        """Keep (codes [sum out, in] int8, scale [sum out] fp32) in the form `kind` reads, and nothing else."""
        if kind == "dynamic":
            self.packed, self.codes, self.scale, self.scale_lp = _fbgemm_pack(codes, scale), None, None, None
        elif kind in ("int8pack", "int8pack_bf16"):
            self.packed, self.codes, self.scale = None, codes, scale
            self.scale_lp = scale.to(torch.bfloat16)                 # what the kernel takes (x's dtype: bf16)
        elif kind == "gemv":
            self.packed, self.codes, self.scale, self.scale_lp = None, codes, scale, None
        else:
            raise ConfigError(f"no CPU int8 kernel form {kind!r} to pack for (nn/quant.kernel_for)")
        self.kind = kind

    def _dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [sum out, in] int8, scale [sum out] fp32), exactly as packed. fbgemm's form: unpacked (a copy);
        the codes form: the held tensors themselves."""
        if self.packed is None:
            return self.codes, self.scale
        qw, _ = torch.ops.quantized.linear_unpack(self.packed)
        return qw.int_repr(), qw.q_per_channel_scales().float()     # scales were fp32 widened: exact

    def _repack(self, kind: str) -> None:
        with torch.inference_mode(False), torch.no_grad():
            codes, scale = self._dense()
            self._hold(kind, codes, scale)

    @property
    def is_packed(self) -> bool:
        return self.kind is not None

    def dense(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Member `index`'s (codes [out, in], scale [out]), tensors of their own (the group is unchanged)."""
        start = sum(self.sizes[:index])
        with torch.inference_mode(False), torch.no_grad():
            codes, scale = self._dense()
            end = start + self.sizes[index]
            return codes[start:end].clone(), scale[start:end].clone()

    def unpack(self) -> None:
        """The codes and scales back in the members' own buffers (exactly), the members Int8Linear again."""
        if self.kind is None:
            return
        with torch.inference_mode(False), torch.no_grad():
            codes, scale = self._dense()
            if len(self.members) == 1:
                parts = [(codes, scale)]
            else:
                parts = list(zip((c.clone() for c in codes.split(self.sizes)), (s.clone() for s in scale.split(self.sizes))))
            for m, (hw, hs), (c, s) in zip(self.members, self.holders, parts):
                for name, h, t in (("weight", hw, c), ("weight_scale", hs, s)):
                    b = m._buffers[name]
                    if b.data_ptr() == h.data_ptr():        # else replaced while packed: the new data is the truth
                        b.data = t
                m.__class__ = Int8Linear
                del m.group, m.index
        self.kind, self.packed, self.codes, self.scale, self.scale_lp = None, None, None, None, None
        self.holders, self._watch, self.bias, self._bias_key = None, None, None, None
        if self.owner is not None:
            setattr(self.owner, self.hook, None)         # set, not deleted: deepcopy may be walking its __dict__

    # -- inference ---------------------------------------------------------------------------------
    def _must_unpack(self, x: torch.Tensor) -> bool:
        """A forward autograd records (x needs a gradient) takes the members' written-out product; a buffer
        that no longer holds our placeholder was replaced and is the truth now."""
        if torch.is_grad_enabled() and x.requires_grad:
            return True
        for bufs, pw, ps in self._watch:
            if bufs["weight"].data_ptr() != pw or bufs["weight_scale"].data_ptr() != ps:
                return True
        return False

    def _fused_bias(self):
        """The members' biases as one [sum out] tensor (a small copy, remade when one changes)."""
        return fused_bias(self, [m.bias for m in self.members])

    def run(self, x: torch.Tensor) -> torch.Tensor | None:
        """x [..., in] -> [..., sum out]: one kernel call on the stacked matrix; None where no CPU kernel takes x
        (its dtype or device: the caller unpacks and runs the members)."""
        if self.kind == "gemv" and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
            y, b = gemv(x, [self.codes], [self.scale]), self._fused_bias()
            return y if b is None else y + b.to(y.dtype)
        kind = kernel_for(x, self.in_features)
        if kind != self.kind:
            if kind is None:
                return None
            self._repack(kind)                             # activations of another dtype: once
        if kind == "dynamic":
            y = torch.ops.quantized.linear_dynamic(x, self.packed, True)    # reduce_range; any leading dims
        else:
            x2 = x.reshape(-1, self.in_features)
            if kind == "int8pack_bf16":
                y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16), self.codes, self.scale_lp).to(x.dtype)
            else:
                y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.codes, self.scale_lp)
            y = y.view(*x.shape[:-1], y.shape[-1])
        b = self._fused_bias()
        return y if b is None else y + b.to(y.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The owner's hook: the members' outputs side by side [..., sum out]."""
        y = None if self._must_unpack(x) else self.run(x)
        if y is None:
            self.unpack()
            return torch.cat([m(x) for m in self.members], dim=-1)
        return y

    def nbytes(self) -> int:
        """Bytes held: the codes and scales; fbgemm's packed matrix counted as the codes it holds plus its per-row
        scale, zero point and column offset (4 bytes each; its blocking pads nothing at multiples of 64)."""
        if self.packed is not None:
            return sum(self.sizes) * (self.in_features + 12)
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.scale_lp) if t is not None)

    def __deepcopy__(self, memo):
        """Reached through the owner's hook: the members' own deepcopy unpacks (the copy is a plain model)."""
        self.unpack()
        return None


class PackedInt8Linear(PackedMember, Int8Linear):
    """An Int8Linear whose codes and scales live in an Int8Group (its class while packed; Int8Linear after)."""

    REAL = BUFFERS
    group: Int8Group
    index: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        y = None if g._must_unpack(x) else g.run(x)
        if y is None:
            g.unpack()
            return self.forward(x)                       # self is an Int8Linear from here
        if len(g.sizes) == 1:
            return y
        start = sum(g.sizes[:self.index])                # called alone (kept-row attention): its slice
        return y[..., start:start + g.sizes[self.index]].contiguous()

    def _write_dense(self, destination, prefix) -> None:
        destination[prefix + "weight"], destination[prefix + "weight_scale"] = self.group.dense(self.index)

    def extra_repr(self) -> str:
        g = self.group
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 packed ({g.kind})"
                + (f" with {len(g.sizes) - 1} more" if len(g.sizes) > 1 else ""))


def _activation_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype the int8 layers' inputs will have: the first float parameter under the quantized scope
    (nn/quant.decoder_scope: the decoder's embedding and norms), None without one."""
    scope = decoder_scope(model)
    root = model.get_submodule(scope) if scope else model
    return next((p.dtype for p in root.parameters() if p.is_floating_point()), None)


def _problem(m: Int8Linear, kind: str | None, dtype: torch.dtype | None) -> str | None:
    w = m._buffers["weight"]
    if w.device.type != "cpu":
        return f"packed int8 weights are a CPU layout; this layer's codes are on {w.device}"
    if w.dtype != torch.int8 or w.shape != (m.out_features, m.in_features):
        return f"an Int8Linear's weight must be int8 [{m.out_features}, {m.in_features}], got {w.dtype} {tuple(w.shape)}"
    if kind is None:
        return (f"no CPU int8 kernel takes {dtype} activations here (float32: fbgemm or int8pack, bfloat16: "
                f"int8pack, for input widths that are multiples of 8); this layer's input width is {m.in_features}")
    return None


def _plan(model: nn.Module, fused: dict, strict: bool, gemv: bool = False, skip: set[int] = frozenset()):
    """[(members, owner, hook, kind)]: the int8 groups to pack. An Attention's q/k/v and a SwiGLU's gate/up
    (`fused`: owner type -> (hook, member names), infer/prepack.FUSED) are one group when all are packable
    Int8Linears alike (input width, all or none with a bias of one dtype) without hooks of their own (a fused
    call would skip them); every other packable Int8Linear is a group alone. strict: an Int8Linear that cannot
    be packed here (device, activation dtype) is an error (ConfigError), else it stays as it is. gemv: the
    compiled kernel's form for float32 / bfloat16 activations. skip: ids of layers left as they are (those the
    compiled decode step reads, infer/fused_decode.py)."""
    dtype = _activation_dtype(model)
    probe = {}

    def kind_of(m) -> str | None:
        if gemv and dtype in (torch.float32, torch.bfloat16):
            return "gemv"
        if m.in_features not in probe:
            x = torch.empty(0, m.in_features, dtype=dtype) if dtype is not None else None
            probe[m.in_features] = None if x is None else kernel_for(x, m.in_features)
        return probe[m.in_features]

    def packable(m) -> bool:
        if not isinstance(m, Int8Linear) or id(m) in skip:   # Int8Linear and PackedInt8Linear
            return False
        problem = _problem(m, kind_of(m), dtype)
        if problem and strict:
            raise ConfigError(problem)
        return problem is None

    def alike(members) -> bool:
        b0 = members[0].bias
        return all(m.in_features == members[0].in_features and kind_of(m) == kind_of(members[0])
                   and (m.bias is None) == (b0 is None) and (b0 is None or m.bias.dtype == b0.dtype) for m in members)
    return [(members, owner, hook, kind_of(members[0])) for members, owner, hook in fusion_plan(model, fused, packable, alike)]


def pack_int8_linears(model: nn.Module, fused: dict, strict: bool = True, gemv: bool = False,
                      skip: set[int] = frozenset()) -> nn.Module:
    """Pack `model`'s Int8Linears (in place): fused q|k|v and gate|up (`fused`: infer/prepack.FUSED), every
    other Int8Linear alone, each the only copy of its codes, in the form the model's activations take (gemv:
    the compiled kernel's, Int8Group). Packed the same way already: nothing to do. A model without
    Int8Linears: nothing to do. skip: ids of layers to leave as they are. Returns the model."""
    # packed already this way: kept (a dtype change repacks in run); into or out of the kernel's form: repacked
    pack_groups(_plan(model, fused, strict, gemv, skip), PackedInt8Linear, lambda g: (g.kind == "gemv") == gemv,
                lambda members, owner, hook, kind: Int8Group(members, kind, owner, hook))
    return model


def unpack_int8_linears(model: nn.Module) -> nn.Module:
    """Every packed int8 layer of `model` back to a plain Int8Linear holding its codes. Returns the model."""
    return unpack_all(model, PackedInt8Linear)


def int8_groups(model: nn.Module) -> list[Int8Group]:
    """The packed int8 groups of `model`, each once."""
    groups = {id(m.group): m.group for m in model.modules() if isinstance(m, PackedInt8Linear)}
    return list(groups.values())
