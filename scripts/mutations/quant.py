"""Weight-only int8 (ocellus/nn/quant.py, the quantized load/save in hub/checkpoint.py, --quantize in cli.py),
guarded by tests/unit/test_quant.py."""
from mutations import Mutation

QUANT = "tests/unit/test_quant.py"

MUTATIONS = [
    Mutation(name="quant: scales taken per input column instead of per output row", file="ocellus/nn/quant.py",
             old="amax = w.abs().amax(dim=1)", new="amax = w.abs().amax(dim=0)", tests=[QUANT]),
    Mutation(name="quant: codes rounded toward zero", file="ocellus/nn/quant.py",
             old="q = torch.round(w / scale[:, None])", new="q = torch.trunc(w / scale[:, None])", tests=[QUANT]),
    Mutation(name="quant: kernel path drops the per-channel scale (fp32 activations)", file="ocellus/nn/quant.py",
             old="y = torch.ops.aten._weight_int8pack_mm(xb, self.weight, self._scale_as(xb)).to(x.dtype)",
             new="y = torch.ops.aten._weight_int8pack_mm(xb, self.weight, torch.ones_like(self._scale_as(xb))).to(x.dtype)",
             tests=[QUANT]),
    Mutation(name="quant: kernel path drops the per-channel scale (bf16 activations)", file="ocellus/nn/quant.py",
             old="y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self._scale_as(x))",
             new="y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self._scale_as(x) * 0 + 1)",
             tests=[QUANT]),
    Mutation(name="quant: a quantized tied lm_head still counted as tied on save/load", file="ocellus/hub/checkpoint.py",
             old='return tuple(k for k in tied if k.rpartition(".")[0] not in q)', new="return tuple(tied)",
             tests=[QUANT]),
    Mutation(name="quant: an int8 checkpoint loaded without quantize is not refused", file="ocellus/hub/checkpoint.py",
             old="if qcfg is not None and quantize is None:", new="if qcfg is not None and quantize == 'never':",
             tests=[QUANT]),
    Mutation(name="quant: --quantize never reaches ocellus.load", file="ocellus/cli.py",
             old="model = ocellus.load(path, dtype=args.dtype, quantize=args.quantize)",
             new="model = ocellus.load(path, dtype=args.dtype, quantize=None)", tests=[QUANT]),
    Mutation(name="quant: the kernel taken for input widths it cannot read (not a multiple of 8)", file="ocellus/nn/quant.py",
             old="kernel = not needs_grad and self.in_features % 8 == 0 and int8_kernel_available(x.device)",
             new="kernel = not needs_grad and int8_kernel_available(x.device)", tests=[QUANT]),
]
