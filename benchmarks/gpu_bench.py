"""The decode and training rounds of benchmarks/gpu.sh: ours against transformers on the same weights, on a device
and dtype of choice (CUDA + bf16 there; SDPA on both sides). The serving round is benchmarks/serve.py.

    python benchmarks/gpu_bench.py decode --device cuda --dtype bf16 --json decode.json
    python benchmarks/gpu_bench.py train --device cuda --dtype bf16 --json train.json
    python benchmarks/gpu_bench.py decode --device cpu --dry-run      # tiny sizes: checks that it runs

decode: ocellus/bench.py's bench_decode (the random ~100M Llama, batch 1 and 8, decode tokens/s without the prefill,
best of --repeats rounds) on that device and dtype.
train: one training step (forward, backward, AdamW) of two models, ours and transformers' built from the same
weights: the ~100M Llama as a causal LM (batch 8 x 256 tokens) and the tiny LLaVA of `ocellus bench train`
(batch 16, every parameter trains). bf16 means autocast over fp32 master weights, on both sides. Median step
time over --repeats rounds, the side going first alternating each round; the device is synchronised around
every step (CUDA runs asynchronously).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import ocellus  # noqa: E402
from ocellus.bench import DTYPES, LLAMA_100M, LLAMA_TINY, build_checkpoint, bench_decode, default_workdir  # noqa: E402
from ocellus.bench import format_table  # noqa: E402
from ocellus.bench_vlm import TINY_TEXT, TINY_VISION, _llava_reference  # noqa: E402


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_steps(models: dict, inputs: dict, device: str, dtype: torch.dtype, steps: int, repeats: int) -> dict:
    """name -> median seconds per training step of that model on `inputs`; bf16 = autocast (fp32 weights)."""
    auto = torch.autocast(torch.device(device).type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def stepper(model):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            with auto:
                loss = model(**inputs).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    runs = {name: stepper(m) for name, m in models.items()}
    for _ in range(2):                               # warm-up: optimizer state, kernel selection
        for step in runs.values():
            step()
    times = {name: [] for name in runs}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            for _ in range(steps):
                _sync(device)
                t = time.perf_counter()
                runs[name]()
                _sync(device)
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def train_rows(device: str, dname: str, dry: bool, steps: int, repeats: int, workdir) -> list[dict]:
    import transformers
    dtype, rows = DTYPES[dname], []
    arch = LLAMA_TINY if dry else LLAMA_100M
    path = build_checkpoint(arch, workdir)
    batch, T = (2, 16) if dry else (8, 256)
    ours = ocellus.load(path, device=device)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").to(device)
    ids = torch.randint(1, arch["vocab_size"], (batch, T), generator=torch.Generator().manual_seed(0)).to(device)
    t = time_steps({"ocellus": ours, "transformers": ref}, {"input_ids": ids, "labels": ids}, device, dtype, steps,
                   repeats)
    rows.append(dict(model=f"{path.name} causal LM", batch=batch, tokens=T, **t))
    del ours, ref
    ref = _llava_reference(TINY_VISION, TINY_TEXT, image_token=639)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = ocellus.load(d, device=device)
    ref = ref.to(device)
    batch = 2 if dry else 16
    patches = (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.full((batch, patches), 639), torch.randint(0, 638, (batch, 40), generator=g)], 1)
    pixels = torch.randn(batch, 3, TINY_VISION["image_size"], TINY_VISION["image_size"], generator=g)
    inputs = {"input_ids": ids.to(device), "pixel_values": pixels.to(device),
              "labels": ids.masked_fill(ids == 639, -100).to(device)}
    t = time_steps({"ocellus": ours, "transformers": ref}, inputs, device, dtype, steps, repeats)
    rows.append(dict(model="tiny LLaVA (bench train)", batch=batch, tokens=ids.shape[1], **t))
    for r in rows:
        r.update(device=device, dtype=dname, ratio=r["transformers"] / r["ocellus"])
        print(f"train {r['model']}, batch {r['batch']} x {r['tokens']}, {dname} on {device}: ours "
              f"{r['batch'] / r['ocellus']:.1f} samples/s, transformers {r['batch'] / r['transformers']:.1f} "
              f"samples/s, ratio {r['ratio']:.2f}x", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["decode", "train"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, one round: checks that it runs")
    p.add_argument("--repeats", type=int, default=3, help="decode: rounds (best); train: rounds (median)")
    p.add_argument("--steps", type=int, default=5, help="train: steps per side per round")
    p.add_argument("--workdir", default=None, help="checkpoint cache (default $OCELLUS_BENCH_DIR)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    workdir = Path(a.workdir) if a.workdir else default_workdir()
    import transformers   # the reference: quiet, no progress bars in the results file
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: torch sees no GPU")
    if a.what == "decode":
        rows = bench_decode(dtypes=(a.dtype,), batches=(1, 8), device=a.device, quick=a.dry_run,
                            repeats=1 if a.dry_run else a.repeats, workdir=workdir)
        print(format_table(rows), flush=True)
    else:
        rows = train_rows(a.device, a.dtype, a.dry_run, 1 if a.dry_run else a.steps, 1 if a.dry_run else a.repeats,
                          workdir)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
