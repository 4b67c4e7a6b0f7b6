"""Serving benchmark: N concurrent streaming clients against `ocellus serve`, continuous batching vs
one request at a time, measured in the same run.

    python benchmarks/serve.py                      # embedded tiny LLaVA + a ~100M random Llama
    python benchmarks/serve.py --quick              # embedded model only, fewer requests
    python benchmarks/serve.py --json out.json

For each model and each client count (1, 4, 16) the same requests are sent to two servers: one
with --slots 16 (continuous batching) and one with --slots 1 (one request at a time, the same
engine otherwise). Each client sends its requests one after another over HTTP with stream=true;
every request decodes exactly --max-tokens tokens (ignore_eos) so both modes do the same work.
Reported: output tokens/s over the wall time of the whole round, time to first token (first
content chunk) p50/p99, request latency p50/p99, and the batching/serial throughput ratio.

The clients run in this process (threads, stdlib HTTP) on the same machine as the server, so
they take some CPU from it; state the machine's load when you quote the numbers.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ocellus  # noqa: E402
from ocellus.serve.process import ServerProcess  # noqa: E402


def random_llama_100m(out: Path) -> Path:
    """A ~100M-parameter Llama with random weights and the embedded model's tokenizer (vocab 502)."""
    from ocellus.hub.families import family_for_config
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 502, "hidden_size": 768,
           "intermediate_size": 2048, "num_hidden_layers": 14, "num_attention_heads": 12, "num_key_value_heads": 4,
           "max_position_embeddings": 512, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": True}
    torch.manual_seed(0)
    model = family_for_config(cfg).build(cfg)
    ocellus.save(model, out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ocellus.default_model_dir() / name, out / name)
    return out


def shape_data_url() -> str:
    from PIL import Image
    img = Image.new("RGB", (48, 48), (255, 255, 255))
    img.paste((220, 30, 30), (12, 12, 36, 36))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def one_request(url: str, body: bytes) -> tuple[float, float, int]:
    """-> (time to first content chunk, total latency, completion tokens) of one streamed request."""
    start = time.perf_counter()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    ttft, tokens = None, 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for line in resp:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - start
    return ttft if ttft is not None else float("nan"), time.perf_counter() - start, tokens


def round_of(url: str, body: bytes, clients: int, per_client: int) -> dict:
    results, errors = [], []

    def client():
        for _ in range(per_client):
            try:
                results.append(one_request(url, body))
            except Exception as e:  # counted, reported
                errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts, lats = sorted(r[0] for r in results), sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")

    return {"clients": clients, "requests": len(results), "errors": len(errors), "tokens": tokens,
            "wall_s": wall, "tokens_per_s": tokens / wall, "ttft_p50_s": pct(ttfts, .5), "ttft_p99_s": pct(ttfts, .99),
            "latency_p50_s": pct(lats, .5), "latency_p99_s": pct(lats, .99),
            "latency_mean_s": statistics.fmean(lats) if lats else float("nan")}


def bench_model(name: str, model_dir: Path, content, max_tokens: int, client_counts, per_client: int,
                threads: int) -> list[dict]:
    rows = []
    for mode, slots in (("continuous", 16), ("one-at-a-time", 1)):
        env = {"OMP_NUM_THREADS": str(threads)}
        with ServerProcess("--model", str(model_dir), "--model-name", name, "--slots", str(slots),
                           "--max-queue", "256", "--max-tokens", str(max_tokens), "--request-timeout", "600",
                           env=env) as srv:
            body = json.dumps({"model": name, "messages": [{"role": "user", "content": content}],
                               "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                               "stream_options": {"include_usage": True}}).encode()
            one_request(srv.url, body)  # warm-up
            for clients in client_counts:
                r = round_of(srv.url, body, clients, per_client)
                r.update(model=name, mode=mode)
                rows.append(r)
                print(f"  {name:18s} {mode:14s} clients={clients:2d}  {r['tokens_per_s']:7.1f} tok/s  "
                      f"TTFT p50 {r['ttft_p50_s'] * 1e3:7.1f} ms  latency p50 {r['latency_p50_s']:6.2f} s "
                      f"p99 {r['latency_p99_s']:6.2f} s  errors {r['errors']}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | clients | mode | tokens/s | TTFT p50 | TTFT p99 | latency p50 | latency p99 | speed-up |",
           "|---|---|---|---|---|---|---|---|---|"]
    serial = {(r["model"], r["clients"]): r["tokens_per_s"] for r in rows if r["mode"] == "one-at-a-time"}
    for r in sorted(rows, key=lambda r: (r["model"], r["clients"], r["mode"])):
        ratio = r["tokens_per_s"] / serial[(r["model"], r["clients"])]
        out.append(f"| {r['model']} | {r['clients']} | {r['mode']} | {r['tokens_per_s']:.1f} | "
                   f"{r['ttft_p50_s'] * 1e3:.0f} ms | {r['ttft_p99_s'] * 1e3:.0f} ms | {r['latency_p50_s']:.2f} s | "
                   f"{r['latency_p99_s']:.2f} s | {ratio:.2f}x |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="embedded model only, 1 request per client")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    per_client = 1 if args.quick else args.per_client
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}; torch {torch.__version__}", flush=True)
    rows = bench_model("llava-tiny-shapes", ocellus.default_model_dir(),
                       [{"type": "image_url", "image_url": {"url": shape_data_url()}},
                        {"type": "text", "text": "Describe the image in detail."}], 64, counts, per_client, args.threads)
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            d = random_llama_100m(Path(tmp) / "llama-100m")
            rows += bench_model("random-llama-100m", d, "Describe a red circle left of a blue square.", 32, counts,
                                per_client, args.threads)
    print(table(rows))
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
