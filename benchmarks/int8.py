"""Weight-only int8 (issue 21 item 2), measured in one run: agreement, decode speed, shapes-vqa.

    python benchmarks/int8.py [--agree-n 64] [--vqa-n 500] [--repeats 3] [--skip-vqa]

1. Greedy agreement with bf16 on a held-out prompt set: the embedded default model (ocellus/assets/llava-tiny-shapes)
   asked about shapes scenes no recipe or eval uses (seed EVAL_SEED + 1): n caption prompts and n shapes-vqa
   questions, up to 40 new tokens, one prompt at a time. Token agreement is teacher-forced (int8's argmax at each position of bf16's own greedy
   continuation, up to its end-of-turn token); free-running exact match is the share of whole replies equal.
2. Decode tokens/s, batch 1, on the 100M Llama of `ocellus bench decode`: fp32, bf16, int8 with fp32 activations
   (fbgemm's dynamic int8 linear: the path a float32 model takes; q|k|v and gate|up fused, infer/prepack_int8.py,
   and unfused: prepack=False), int8 with bf16 activations (lm_head int8, and left in bf16), rounds interleaved,
   each the best round, and the median over rounds of each row's ratio to bf16 in the same round;
   rate = (N2 - N1) / (t(N2) - t(N1)).
3. shapes-vqa (n 500) of the default model, float32 as shipped and with quantize="int8" (float32 activations:
   quantized per tensor to 7 bits for each product, nn/quant.py).
Agreement (1) is measured for int8 with bf16 activations and with fp32 activations, both against bf16.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch

import ocellus
from ocellus.bench import LLAMA_100M, build_checkpoint, default_workdir
from ocellus.eval.harness import EVAL_SEED, _conversation, eval_image_size, evaluate, task_samples
from ocellus.nn.quant import quantize_model


@torch.inference_mode()
def agreement(n: int, lm_head: bool = True, dtype: str = "bfloat16") -> dict:
    path = ocellus.default_model_dir()
    ref = ocellus.load(path, dtype="bfloat16")
    q = quantize_model(ocellus.load(path, dtype=dtype), lm_head=lm_head)
    proc = ocellus.load_processor(path)
    eos = proc.eos_token_id
    size = eval_image_size(ref, proc)
    samples = [s for task in ("shapes-caption", "shapes-vqa") for s in task_samples(task, n, size, seed=EVAL_SEED + 1)]
    same = total = exact = 0
    for s in samples:
        messages, images = _conversation(s, [])
        batch = proc(messages=[messages], images=[images])
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        T = batch["input_ids"].shape[1]
        a = ref.generate(**batch, max_new_tokens=40)
        b = q.generate(**batch, max_new_tokens=40)
        gen = a[0, T:].tolist()
        stop = gen.index(eos) + 1 if eos in gen else len(gen)
        logits = q(input_ids=a, attention_mask=torch.ones_like(a), **extra).logits[0, T - 1:T - 1 + stop]
        same += int((logits.argmax(-1) == a[0, T:T + stop]).sum())
        total += stop
        bg = b[0, T:].tolist()
        exact += int(bg[:bg.index(eos) + 1 if eos in bg else len(bg)] == gen[:stop])
    return dict(prompts=len(samples), tokens=total, token_agreement=same / total, exact_replies=exact / len(samples))


@torch.inference_mode()
def decode_rates(repeats: int, prompt_len: int = 128, n1: int = 1, n2: int = 128) -> dict:
    path = build_checkpoint(LLAMA_100M, default_workdir())
    models = {"fp32": ocellus.load(path, dtype="float32"), "bf16": ocellus.load(path, dtype="bfloat16"),
              "int8, fp32 act": ocellus.load(path, dtype="float32", quantize="int8"),
              "int8, fp32 act, unfused": ocellus.load(path, dtype="float32", quantize="int8"),
              "int8": ocellus.load(path, dtype="bfloat16", quantize="int8"),
              "int8, lm_head bf16": quantize_model(ocellus.load(path, dtype="bfloat16"), lm_head=False)}
    ids = torch.randint(2, LLAMA_100M["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(1))
    kw = {k: dict(prepack=not k.endswith("unfused")) for k in models}
    for k, m in models.items():
        m.generate(ids, max_new_tokens=n1, **kw[k])
    best = {k: {n1: math.inf, n2: math.inf} for k in models}
    outs, rounds = {}, []
    for _ in range(repeats):
        took = {}
        for k, m in models.items():
            for n in (n1, n2):
                t0 = time.perf_counter()
                outs[k] = m.generate(ids, max_new_tokens=n, **kw[k])
                took[k, n] = time.perf_counter() - t0
                best[k][n] = min(best[k][n], took[k, n])
        rounds.append({k: (n2 - n1) / (took[k, n2] - took[k, n1]) for k in models})
    rates = {k: (n2 - n1) / (b[n2] - b[n1]) for k, b in best.items()}
    median_ratio = {k: statistics.median(r[k] / r["bf16"] for r in rounds) for k in models}
    ref = outs["bf16"][0, prompt_len:]
    agree = {k: float((o[0, prompt_len:] == ref).float().mean()) for k, o in outs.items()}
    return dict(rates=rates, same_as_bf16=agree, median_ratio=median_ratio)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agree-n", type=int, default=64)
    p.add_argument("--vqa-n", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-vqa", action="store_true")
    p.add_argument("--skip-agree", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    for dtype, lm_head in (() if a.skip_agree else (("float32", True), ("bfloat16", True), ("bfloat16", False))):
        ag = agreement(a.agree_n, lm_head=lm_head, dtype=dtype)
        print(f"agreement with bf16, default model, int8 with {dtype} activations, lm_head "
              f"{'int8' if lm_head else 'bf16'}, {ag['prompts']} held-out "
              f"prompts, {ag['tokens']} tokens: {ag['token_agreement']:.1%} of tokens (teacher-forced), "
              f"{ag['exact_replies']:.1%} of replies identical (free-running)  [{time.time() - t0:.0f} s]", flush=True)
    d = decode_rates(a.repeats)
    r = d["rates"]
    print(f"decode batch 1, 100M Llama, {torch.get_num_threads()} threads (best of {a.repeats} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.2f}):", flush=True)
    for k, v in r.items():
        print(f"  {k:>23}: {v:6.1f} tok/s  = {v / r['bf16']:.2f}x bf16 (median of rounds {d['median_ratio'][k]:.2f}x), "
              f"{v / r['fp32']:.2f}x fp32;  greedy ids equal to bf16's: {d['same_as_bf16'][k]:.0%}", flush=True)
    if not a.skip_vqa:
        path = ocellus.default_model_dir()
        acc = {}
        for name, quant in (("float32", None), ("int8", "int8")):
            res = evaluate(path, "shapes-vqa", n=a.vqa_n, quantize=quant, printer=lambda *_: None)
            acc[name] = res["table"]["all"][1]
        print(f"shapes-vqa n={a.vqa_n}: float32 {acc['float32']:.1%}, int8 {acc['int8']:.1%} "
              f"({(acc['int8'] - acc['float32']) * 100:+.1f} points)", flush=True)
    print(f"[{time.time() - t0:.0f} s in all]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
