"""Block-scaled FP8 checkpoints (DeepSeek-V3 / R1's release format; transformers' quant method "fp8") read as
float weights.

config.json: quantization_config {quant_method: fp8, fmt: e4m3, weight_block_size: [128, 128],
activation_scheme: dynamic}. Each quantized Linear stores `X.weight` as float8_e4m3fn [out, in] beside
`X.weight_scale_inv`, fp32 [ceil(out / bm), ceil(in / bn)]: one scale per bm x bn block, the last row and
column of blocks ragged where out or in is not a multiple (DeepSeek-V3's kv_a_proj_with_mqa has 576 rows).
Embeddings, norms, routers and lm_head stay in bf16. Dequantised on load as DeepSeek's `weight_dequant`
(inference/kernel.py) and transformers' FP8 integration define it:

    w[i, j] = float32(fp8[i, j]) * scale_inv[i // bm, j // bn]      then cast to the load dtype

so the model holds ordinary float weights (training, saving, int8 quantisation as for any float checkpoint; a
save writes no quantization_config). activation_scheme "dynamic" means activations were quantised on the fly at
inference, nothing stored; "static" checkpoints carry activation scales a float model has no place for and are
refused.
"""
from __future__ import annotations

import torch

from ocellus.errors import CheckpointError, ConfigError

FP8_METHOD = "fp8"
SCALE_SUFFIX = "_scale_inv"                                   # X.weight -> X.weight_scale_inv
FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def is_fp8(qcfg) -> bool:
    return isinstance(qcfg, dict) and qcfg.get("quant_method") == FP8_METHOD


def fp8_layout(qcfg: dict, where: str) -> tuple[torch.dtype, tuple[int, int]]:
    """quantization_config -> (the weights' float8 dtype, (bm, bn)); a field this reader cannot honour is a
    ConfigError naming it."""
    fmt = qcfg.get("fmt", "e4m3")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: fp8 quantization_config fmt {fmt!r} unsupported; known: {sorted(FORMATS)}")
    if qcfg.get("activation_scheme", "dynamic") != "dynamic":
        raise ConfigError(f"{where}: fp8 activation_scheme {qcfg['activation_scheme']!r} unsupported: only "
                          f"'dynamic' (no stored activation scales) dequantises to a float model")
    block = qcfg.get("weight_block_size")
    if not (isinstance(block, (list, tuple)) and len(block) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise ConfigError(f"{where}: fp8 weight_block_size must be [rows, cols] positive integers (DeepSeek-V3: "
                          f"[128, 128]), got {block!r}")
    return FORMATS[fmt], (block[0], block[1])


def dequantize_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                      dtype: torch.dtype, name: str = "weight") -> torch.Tensor:
    """fp8 [out, in] x per-block scales [ceil(out/bm), ceil(in/bn)] -> [out, in] in `dtype` (computed in fp32)."""
    (bm, bn), (out, inp) = block, weight.shape
    grid = (-(-out // bm), -(-inp // bn))
    if tuple(scale_inv.shape) != grid:
        raise CheckpointError(f"{name}{SCALE_SUFFIX}: shape {tuple(scale_inv.shape)}, but a {out}x{inp} weight in "
                              f"{bm}x{bn} blocks has {grid[0]}x{grid[1]} scales")
    scale = scale_inv.float().repeat_interleave(bm, dim=0)[:out].repeat_interleave(bn, dim=1)[:, :inp]  # [out, in]
    return (weight.float() * scale).to(dtype)


def dequantize_checkpoint(tensors: dict[str, torch.Tensor], qcfg: dict, dtype: torch.dtype,
                          where: str) -> dict[str, torch.Tensor]:
    """Every (X.weight, X.weight_scale_inv) pair -> X.weight in `dtype`; other tensors as they are. A scale
    without its weight, an fp8 weight without its scale, or a scaled weight of another dtype is a
    CheckpointError listing them all."""
    fp8, block = fp8_layout(qcfg, where)
    scaled = {k[:-len(SCALE_SUFFIX)] for k in tensors if k.endswith(".weight" + SCALE_SUFFIX)}
    out, problems = {}, []
    for key, t in tensors.items():
        if key.endswith(".weight" + SCALE_SUFFIX):
            if key[:-len(SCALE_SUFFIX)] not in tensors:
                problems.append(f"{key} scales no weight")
        elif key in scaled:
            if t.dtype != fp8 or t.dim() != 2:
                problems.append(f"{key} has block scales but is {t.dtype} {tuple(t.shape)}, not 2-D {fp8}")
            else:
                out[key] = dequantize_blocks(t, tensors[key + SCALE_SUFFIX], block, dtype, key)
        elif t.dtype in FORMATS.values():
            problems.append(f"{key} is {t.dtype} without its {key}{SCALE_SUFFIX}")
        else:
            out[key] = t
    if problems:
        raise CheckpointError(f"{where}: fp8 checkpoint ({len(problems)} problems): " + "; ".join(problems[:10])
                              + (" ..." if len(problems) > 10 else ""))
    return out
