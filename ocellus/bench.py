"""Decode-throughput benchmark: Ocellus vs transformers `generate` on the same random Llama weights.

    python benchmarks/decode.py [--dtypes fp32,bf16] [--batches 1,8] [--quick]   (= ocellus bench decode)
    ocellus bench decode --vs llamacpp      llama.cpp on the same weights as GGUF instead (bench_llamacpp.py)

For each (dtype, batch) both implementations greedily generate from a fixed random prompt, and
the decode rate is counted without the prefill: B * (N2 - N1) / (t(N2) - t(N1)), N1 = 1 and
N2 = 128 new tokens by default, each time the best of several rounds.

Small-batch decoding is bound by reading every weight once per step. The roofline is that read alone:
the model's own linear weights (lm_head included, each tensor once) summed one after the other (`.sum()`,
a streaming read), the best pass of the round: B tokens per such pass is what no decoder can beat on this
machine, and ours/roofline the share of it ours reaches. The ceiling is B tokens pushed through every
weight matrix with plain F.linear calls (the GEMV ceiling of issue 2): above it means the packed, fused
layout reads weights faster than F.linear can (infer/prepack.py). Both read the plain weights taken
before ours packed its own (the packed ones are oneDNN's layout), measured in the same rounds.

Rounds interleave ours, transformers and the ceiling, so load from other processes slows all
three alike; on a shared machine, repeat and keep the best.
transformers is only the oracle here: it is imported inside the functions that use it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError
from ocellus.infer.prepack import prepack_supports, prepare_decode
from ocellus.kernels.gemv import kernel
from ocellus.nn.quant import Int8Linear

# ~100M parameters: 75.5M in the blocks + 24.6M in the (tied) embedding / lm_head; GQA 12 q / 4 kv heads.
LLAMA_100M = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                  tie_word_embeddings=True)
LLAMA_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=True)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def default_workdir() -> Path:
    return Path(os.environ.get("OCELLUS_BENCH_DIR") or Path(tempfile.gettempdir()) / "ocellus-bench")


def build_checkpoint(arch: dict, workdir: Path, seed: int = 0) -> Path:
    """A random Llama checkpoint saved by transformers (fp32), reused when already in workdir.
    eos is None so both implementations generate every requested token."""
    name = "llama-" + "-".join(f"{arch[k]}" for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                      "vocab_size", "num_key_value_heads")) + f"-s{seed}"
    path = Path(workdir) / name
    if (path / "config.json").exists():
        return path
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**arch, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    os.replace(tmp, path)  # atomic: a half-written dir is never reused
    return path


def count_parameters(model: nn.Module) -> int:
    """Parameters (tied tensors once) and int8 layers' codes (buffers, nn/quant.py Int8Linear: the weights they are)."""
    return sum(p.numel() for p in model.parameters()) + sum(m.weight.numel() for m in model.modules()
                                                            if isinstance(m, Int8Linear))


def _now(device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def plain_weights(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]]:
    """(layer, weight, bias) of every linear layer (lm_head included), taken before decoding packs the
    weights (infer/prepack.py): what the ceiling and the roofline read. They hold the plain storage."""
    return [(m, m.weight.detach(), None if m.bias is None else m.bias.detach())
            for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear))]


def ceiling_seconds(weights, batch: int, passes: int = 32, dtype: torch.dtype | None = None) -> float:
    """Seconds per pass of `batch` tokens through every linear layer of `weights` (plain_weights) with
    F.linear, averaged over `passes` back-to-back passes: the weight-reading cost of plain GEMV calls.
    Sustained over many passes, like the decode runs it is compared with, so background load on the
    machine biases both alike. dtype: the activations' (default: the first float weight or bias; an int8
    model's activations are its embedding's dtype, which measure passes)."""
    w0 = weights[0][1]
    dtype = dtype or next((t.dtype for _, w, b in weights for t in (w, b) if t is not None and t.is_floating_point()),
                          None)
    if dtype is None:
        raise ConfigError("ceiling_seconds: no float weight or bias to take the compute dtype from; pass dtype")
    xs = {m.in_features: torch.randn(batch, m.in_features, dtype=dtype, device=w0.device) for m, _, _ in weights}

    def one(m, w, b):                 # an int8 layer's weight read is its own kernel (nn/quant.py)
        return m(xs[m.in_features]) if isinstance(m, Int8Linear) else F.linear(xs[m.in_features], w, b)

    with torch.inference_mode():
        for t in weights:  # warm-up: first-call kernel selection
            one(*t)
        t0 = _now(w0.device)
        for _ in range(passes):
            for t in weights:
                one(*t)
        return (_now(w0.device) - t0) / passes


def read_tensors(weights) -> list[torch.Tensor]:
    """Each weight and bias storage of `weights` once (a tied lm_head reads the embedding's, counted once);
    an int8 layer reads its int8 weight and its scales."""
    seen, out = set(), []
    for m, w, b in weights:
        for t in (w, b, getattr(m, "weight_scale", None) if isinstance(m, Int8Linear) else None):
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                out.append(t.detach())      # its own view: packing later swaps the buffer's data for a placeholder
    return out


def streamed(t: torch.Tensor) -> torch.Tensor:
    """The same bytes as float32 where they divide into them: `.sum()` over int8 codes is an integer reduction
    that runs at a fraction of the memory's rate (0.9 GB/s here against 20+), and over bfloat16 a widening one
    (16 GB/s against 26), which would put the roofline below what a decoder reads; a float32 view of the same
    storage reads at the streaming rate."""
    if t.dtype == torch.float32 or not t.is_contiguous() or (t.numel() * t.element_size()) % 4:
        return t
    return t.reshape(-1).view(torch.uint8).view(torch.float32)


def read_seconds(tensors: list[torch.Tensor], passes: int = 8) -> float:
    """Seconds of the best of `passes` streaming reads of every tensor once: the roofline's denominator, bytes /
    this = the read bandwidth decoding gets at most. Each pass is the faster of `.sum()` over each tensor (as
    float32) and, on CPU where it builds, the compiled read (kernels/gemv.cpp read_pass: 4 streams a block, the
    next block prefetched, as the row kernels read), which reads faster than `.sum()` here: a decoder that reads
    at the compiled rate would otherwise show above 100%."""
    tensors = [streamed(t) for t in tensors]
    ext = kernel() if tensors[0].device.type == "cpu" else None
    reads = [lambda: [t.sum() for t in tensors]] + ([lambda: ext.read_pass(tensors)] if ext is not None else [])
    best = math.inf
    with torch.inference_mode():
        for read in reads:
            for _ in range(passes + 1):                   # the first pass warms up
                t0 = _now(tensors[0].device)
                read()
                best = min(best, _now(tensors[0].device) - t0)
    return best


def transformers_runner(theirs, ids: torch.Tensor):
    """fn(new_tokens) -> ids [B, T + new_tokens]: transformers' greedy generate, every token generated."""
    mask = torch.ones_like(ids)

    def run_theirs(n):
        with torch.inference_mode():
            return theirs.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)

    return run_theirs


def measure(ours, reference, ids: torch.Tensor, n1: int, n2: int, repeats: int, device, prepack: bool = True,
            gemv: bool | None = None, gemv_ab: bool = False) -> dict:
    """Decode tokens/s of ours (prepack: its default packed weights / compiled GEMV at batch 1, else plain;
    gemv: GenerationConfig.gemv), the reference (fn(new_tokens) -> ids [B, T + new_tokens], greedy), the
    ceiling and the roofline, each the best of `repeats` rounds; one round runs everything once (interleaved, so
    load from other processes hits all alike). gemv_ab: ours once more without the compiled GEMV in each round
    ("ocellus_nogemv"; its ids in "same_tokens_nogemv"). Decode rate = B * (n2 - n1) / (t(n2) - t(n1)): the
    prefill cancels out; each runner's weights are prepared (packed or not) before it is timed."""
    batch = ids.shape[0]
    weights = plain_weights(ours)                     # before the first generate packs ours
    act = next(p for p in ours.parameters() if p.is_floating_point()).dtype   # the activations (int8 layers too)
    tensors = read_tensors(weights)
    runners = {"ocellus": lambda n: ours.generate(ids, max_new_tokens=n, prepack=prepack, gemv=gemv),
               "reference": reference}
    setups = {"ocellus": lambda: prepare_decode(ours, batch, prepack, gemv)}
    if gemv_ab:
        runners["ocellus_nogemv"] = lambda n: ours.generate(ids, max_new_tokens=n, prepack=prepack, gemv=False)
        setups["ocellus_nogemv"] = lambda: prepare_decode(ours, batch, prepack, False)
    for fn in runners.values():  # warm-up: first-call allocations, lazy inits
        fn(n1)
    best = {name: {n1: math.inf, n2: math.inf} for name in runners}
    ceiling, read, outs = math.inf, math.inf, {}
    for _ in range(repeats):
        for name, fn in runners.items():
            if name in setups:                        # a switch of layout (pack / unpack) is not decode time
                setups[name]()
            for n in (n1, n2):
                t0 = _now(device)
                outs[name] = fn(n)
                best[name][n] = min(best[name][n], _now(device) - t0)
        ceiling = min(ceiling, ceiling_seconds(weights, batch, passes=max(8, min(n2 - n1, 32)), dtype=act))
        read = min(read, read_seconds(tensors))
    rates = {name: batch * (n2 - n1) / max(b[n2] - b[n1], 1e-9) for name, b in best.items()}
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    ab = dict(ocellus_nogemv=rates["ocellus_nogemv"],
              same_tokens_nogemv=bool(torch.equal(outs["ocellus"], outs["ocellus_nogemv"]))) if gemv_ab else {}
    return dict(**ab, ocellus=rates["ocellus"], reference=rates["reference"], ceiling=batch / ceiling,
                roofline=batch / read, read_gbs=nbytes / read / 1e9, read_bytes=nbytes,
                same_tokens=bool(torch.equal(outs["ocellus"], outs["reference"])))


def bench_decode(dtypes=("fp32", "bf16"), batches=(1, 8), prompt_len: int = 128, new_tokens: int = 128,
                 base_tokens: int = 1, repeats: int = 3, quick: bool = False, workdir=None, device="cpu",
                 arch: dict | None = None, threads: int | None = None, verbose: bool = True,
                 prepack: bool = False, quantize: str | None = None, vs: str = "transformers",
                 gemv: bool | None = None, gemv_ab: bool = False) -> list[dict]:
    """-> one dict per (dtype, batch): ours / the reference's decode tokens/s (key: `vs`), their ratio,
    the ceiling and ours / ceiling. Decode rate = B * (new_tokens - base_tokens) / (t(new) - t(base)).
    vs="llamacpp": the reference is llama.cpp on the same weights as GGUF (f32 / bf16 / q8_0 opposite
    fp32 / bf16 / int8; bench_llamacpp.py), batch 1 only.
    prepack: ours decodes as `generate` does by default, oneDNN-prepacked fused weights (infer/prepack.py)
    packed for each batch size; False: plain weights. The ceiling and the roofline read the plain weights.
    quantize="int8": one more row set, "int8": ours loaded with quantize="int8" (bf16 activations, nn/quant.py)
    against transformers in bf16; its ceiling is one int8-kernel pass over the same layers.
    gemv: ours with (None: where it builds; True: required) or without (False) the compiled batch-1 GEMV
    (infer/gemv_decode.py); gemv_ab: ours without it too, in the same rounds (`ocellus_nogemv`, `gemv_x`)."""
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    import ocellus
    import transformers

    if quick:  # a smoke test: tiny model, few tokens; the numbers mean nothing
        arch = arch or LLAMA_TINY
        prompt_len, new_tokens, base_tokens, repeats = min(prompt_len, 16), min(new_tokens, 12), 2, 1
    arch = arch or LLAMA_100M
    if threads:
        torch.set_num_threads(threads)
    if vs not in REFERENCES:
        raise ConfigError(f"unknown reference {vs!r}; use one of {list(REFERENCES)}")
    if vs == "llamacpp":
        try:  # lazy: the [llamacpp] extra (gguf, llama-cpp-python) is needed by --vs llamacpp only
            from ocellus import bench_llamacpp
        except ImportError as e:
            raise ConfigError(f"--vs llamacpp needs the [llamacpp] extra: {e}; pip install 'ocellus[llamacpp]'") from e
        if set(batches) != {1}:
            raise ConfigError(f"--vs llamacpp measures batch 1 only, got batches {list(batches)}")
    transformers.logging.set_verbosity_error()
    path = build_checkpoint(arch, Path(workdir) if workdir else default_workdir())
    rows = []
    for dname in list(dtypes) + ([quantize] if quantize else []):
        dtype = DTYPES.get(dname, torch.bfloat16)      # int8: bf16 activations
        ours = ocellus.load(path, dtype=dtype, device=device, quantize=quantize if dname == quantize else None)
        packed = prepack and prepack_supports(dtype)   # an AVX2-only CPU has no oneDNN bf16 kernels: plain
        theirs = None if vs == "llamacpp" else \
            transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        if verbose:
            print(f"# {path.name}: {count_parameters(ours) / 1e6:.1f}M parameters, {dname}, "
                  f"{torch.get_num_threads()} threads, prompt {prompt_len}, decode tokens {base_tokens + 1}..{new_tokens}, "
                  f"ours with {'prepacked fused' if packed else 'plain'} weights"
                  f"{'' if gemv is False or not prepack else ' (the compiled GEMV at batch 1 where it builds)'}"
                  f", against {vs}",
                  flush=True)
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            ids = torch.randint(2, arch["vocab_size"], (batch, prompt_len), generator=g).to(device)
            reference = transformers_runner(theirs, ids) if vs == "transformers" else \
                bench_llamacpp.reference_runner(path, dname, ids, torch.get_num_threads(), prompt_len + new_tokens)
            r = measure(ours, reference, ids, base_tokens, new_tokens, repeats, device, prepack=prepack, gemv=gemv,
                        gemv_ab=gemv_ab)
            row = dict(dtype=dname, batch=batch, prepacked=packed, prompt=prompt_len, new_tokens=new_tokens, ocellus=r["ocellus"],
                       vs=vs, **{vs: r["reference"]}, ratio=r["ocellus"] / r["reference"], ceiling=r["ceiling"],
                       of_ceiling=r["ocellus"] / r["ceiling"], roofline=r["roofline"], read_gbs=r["read_gbs"],
                       read_bytes=r["read_bytes"],
                       of_roofline=r["ocellus"] / r["roofline"], same_tokens=r["same_tokens"])
            if gemv_ab:
                row.update(ocellus_nogemv=r["ocellus_nogemv"], gemv_x=r["ocellus"] / r["ocellus_nogemv"],
                           of_roofline_nogemv=r["ocellus_nogemv"] / r["roofline"],
                           same_tokens_nogemv=r["same_tokens_nogemv"])
            rows.append(row)
            if verbose:
                print(format_row(row), flush=True)
                if gemv_ab:
                    print(format_gemv(row), flush=True)
            del reference
        del ours, theirs
    by = {(r["dtype"], r["batch"]): r["ocellus"] for r in rows}
    for r in rows:
        if r["dtype"] == quantize:
            r.update({f"x_{d}": r["ocellus"] / by[(d, r["batch"])] for d in dtypes if (d, r["batch"]) in by})
    return rows


def format_quant(rows: list[dict]) -> str:
    """int8 next to bf16 and fp32 (ours, same run) per batch size: the lines `--quantize` adds."""
    lines = []
    for r in rows:
        if any(k.startswith("x_") for k in r):
            same = {d: by for d, by in ((k[2:], v) for k, v in r.items() if k.startswith("x_"))}
            lines.append(f"{r['dtype']} batch {r['batch']}: {r['ocellus']:.1f} tok/s = "
                         + ", ".join(f"{v:.2f}x {d}" for d, v in same.items()))
    return "\n".join(lines)


def format_gemv(r: dict) -> str:
    """The line `--gemv-ab` adds under a row: ours without the compiled GEMV in the same rounds."""
    return (f"{r['dtype']} batch {r['batch']}: without the compiled GEMV {r['ocellus_nogemv']:.1f} tok/s "
            f"({r['of_roofline_nogemv']:.0%} of the roofline); with it {r['ocellus']:.1f} ({r['of_roofline']:.0%}): "
            f"{r['gemv_x']:.2f}x, same ids {r['same_tokens_nogemv']}")


REFERENCES = {"transformers": "transformers", "llamacpp": "llama.cpp"}   # --vs name -> column label


def header(vs: str = "transformers") -> str:
    return (f"{'dtype':>5} {'batch':>5} {'ocellus tok/s':>13} {REFERENCES[vs] + ' tok/s':>18} {'ratio':>6} "
            f"{'ceiling tok/s':>13} {'ours/ceiling':>12} {'roofline tok/s':>14} {'read GB/s':>9} {'ours/roofline':>13} "
            f"{'theirs/roofline':>15} {'same ids':>8}")


HEADER = header()


def format_row(r: dict) -> str:
    ref = r[r.get("vs", "transformers")]
    return (f"{r['dtype']:>5} {r['batch']:>5} {r['ocellus']:>13.1f} {ref:>18.1f} {r['ratio']:>5.2f}x "
            f"{r['ceiling']:>13.1f} {r['of_ceiling']:>11.0%} {r['roofline']:>14.1f} {r['read_gbs']:>9.1f} "
            f"{r['of_roofline']:>12.0%} {ref / r['roofline']:>14.0%} {str(r['same_tokens']):>8}")


def format_table(rows: list[dict]) -> str:
    return "\n".join([header(rows[0].get("vs", "transformers") if rows else "transformers"),
                      *(format_row(r) for r in rows)])


def main_decode(argv=None) -> int:
    """`ocellus bench decode` / `python benchmarks/decode.py`: parse options, run, print the table.
    Returns the exit status (bench_decode returns the rows)."""
    p = argparse.ArgumentParser(prog="ocellus bench decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8; 1 with --vs llamacpp)")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=128, help="generated tokens (N2)")
    p.add_argument("--base-tokens", type=int, default=1, help="N1: its time (prefill included) is subtracted")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each number is the best round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--workdir", default=None, help=f"checkpoint cache (default {default_workdir()})")
    p.add_argument("--quick", action="store_true", help="tiny model, few tokens (a smoke test)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="also run ours with int8 weights (bf16 activations) and print it against bf16 and fp32")
    p.add_argument("--vs", default="transformers", choices=list(REFERENCES),
                   help="the reference: transformers generate, or llama.cpp on the same weights as GGUF (batch 1; "
                        "with int8 opposite q8_0 unless --quantize is given; needs the [llamacpp] extra)")
    p.add_argument("--no-prepack", dest="prepack", action="store_false",
                   help="ours with plain weights (default: oneDNN-prepacked weights, infer/prepack.py)")
    p.add_argument("--no-gemv", dest="gemv", action="store_const", const=False, default=None,
                   help="ours without the compiled batch-1 GEMV (default: where it builds, infer/gemv_decode.py)")
    p.add_argument("--gemv", dest="gemv", action="store_const", const=True,
                   help="ours with the compiled batch-1 GEMV or an error saying why not; int8 layers through it too")
    p.add_argument("--gemv-ab", action="store_true",
                   help="also time ours without the compiled GEMV in the same rounds and print the ratio")
    a = p.parse_args(argv)
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        p.error(f"unknown dtypes {unknown}; use {sorted(DTYPES)}")
    if not a.base_tokens < a.new_tokens:
        p.error("--base-tokens must be smaller than --new-tokens")
    llama = a.vs == "llamacpp"
    batches = [int(b) for b in (a.batches or ("1" if llama else "1,8")).split(",")]
    if llama and batches != [1]:
        p.error("--vs llamacpp measures batch 1 only")
    rows = bench_decode(dtypes=dtypes, batches=batches, prompt_len=a.prompt,
                        new_tokens=a.new_tokens, base_tokens=a.base_tokens, repeats=a.repeats, quick=a.quick,
                        workdir=a.workdir, threads=a.threads, prepack=a.prepack,
                        quantize=a.quantize or ("int8" if llama else None), vs=a.vs, gemv=a.gemv, gemv_ab=a.gemv_ab)
    print()
    print(format_table(rows))
    if a.quantize:
        print(format_quant(rows))
    for r in rows if a.gemv_ab else ():
        print(format_gemv(r))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0
