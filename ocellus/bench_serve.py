"""Serving under load (issue 21 item 3): the continuous-batching engine against transformers' `generate` serving
the same requests one at a time, on the same weights (the random ~100M Llama of `ocellus bench decode`).

    python benchmarks/serve.py                 # = ocellus bench serve: the engine in this process
    python benchmarks/serve.py --via server    # the load section over HTTP against `ocellus serve` (a child process)
    python benchmarks/serve.py --quick         # tiny model, few tokens: checks that it runs; the numbers mean nothing

Load: C client threads (1, then 16), each sending R requests one after another; every request is a random P-token
prompt that decodes exactly N tokens (ignore_eos; transformers: min_new_tokens). Per request: latency (sent ->
last token), time to first token (TTFT), time per output token TPOT = (t_last - t_first) / (N - 1). Per round:
output tokens/s over the round's wall time and p50 / p95 of each. transformers serves the same requests with one
`generate` at a time behind a lock (a server without batching): its latency includes the wait for the lock; its
token times come from a streamer.

Long prompt: K streams decode (slots K + 1); once each has W tokens, a 2k-token prompt arrives. For the engine with
chunked prefill (`--chunk` tokens per engine step; a comma list tries each) and without: the running streams' TPOT
before it, their TPOT from its arrival to its first token and their longest gap between two tokens in that window,
and its TTFT. Always in process (the engine directly). transformers one at a time: the prompt's prefill alone (a
real one-at-a-time server would first finish the running streams).

Tokens are words of a WordLevel tokenizer written next to the weights ("w1f" is id 0x1f), so a prompt's text is
exactly its ids and every token streams as one text delta. transformers is the reference: imported inside the
functions that use it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ocellus.bench import DTYPES, LLAMA_100M, LLAMA_TINY, build_checkpoint, default_workdir
from ocellus.data.tokenizer import Tokenizer
from ocellus.infer.batching import BatchEngine, Delta, Failure, Finish, Request, SamplingParams
from ocellus.serve.process import ServerProcess

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"   # the prompt's text is its ids, nothing added


def word_tokenizer(path: Path, vocab: int) -> Tokenizer:
    """A WordLevel tokenizer over `vocab` ids ("<unk>" = 0, then "w1", "w2", ... in hex) and a template that adds
    nothing, written into the checkpoint dir (what `ocellus serve` reads)."""
    import tokenizers
    words = {"<unk>": 0, **{f"w{i:x}": i for i in range(1, vocab)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "add_bos_token": False}))
    return Tokenizer.from_dir(path)


def serving_copy(path: Path) -> Path:
    """The checkpoint beside itself as `<name>-serve`, its files hard-linked (copied where links fail), so the word
    tokenizer is written there and the shared checkpoint `ocellus bench decode` reuses stays as it was."""
    dst = path.with_name(path.name + "-serve")
    dst.mkdir(exist_ok=True)
    for f in path.iterdir():
        if f.is_file() and not (dst / f.name).exists():
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)
    return dst


def as_text(ids: torch.Tensor) -> str:
    return " ".join(f"w{i:x}" for i in ids[0].tolist())


@dataclass
class Timed:
    """One request's clock: sent at t0, each output token's arrival in `times`."""
    t0: float = field(default_factory=time.perf_counter)
    times: list = field(default_factory=list)
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, event) -> None:      # an engine sink
        if isinstance(event, Delta):
            self.times.append(time.perf_counter())
        elif isinstance(event, (Finish, Failure)):
            self.error = event.message if isinstance(event, Failure) else None
            self.done.set()

    def put(self, value) -> None:           # a transformers streamer: the prompt first, then each new token
        if getattr(self, "_prompt_seen", False):
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        self.done.set()


def engine_sender(engine: BatchEngine, n: int):
    def send(ids: torch.Tensor) -> Timed:
        t = Timed()
        engine.submit(Request(ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True), t))
        t.done.wait()
        return t
    return send


def http_sender(url: str, n: int):
    def send(ids: torch.Tensor) -> Timed:
        body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": as_text(ids)}], "max_tokens": n,
                           "temperature": 0, "ignore_eos": True, "stream": True}).encode()
        t = Timed()
        req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as resp:
            for line in resp:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("error"):
                    t.error = chunk["error"]["message"]
                elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    t.times.append(time.perf_counter())
        return t
    return send


def transformers_sender(model, n: int, lock: threading.Lock):
    """One `generate` at a time: a request waits for the lock, as it would queue at a server without batching."""
    def send(ids: torch.Tensor) -> Timed:
        t = Timed()
        with lock, torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, eos_token_id=None, pad_token_id=0, streamer=t)
        return t
    return send


def pct(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def load_round(send, prompts: list, clients: int, per_client: int) -> dict:
    """`clients` threads, each sending its `per_client` prompts one after another. -> the round's figures."""
    results, lock = [], threading.Lock()

    def client(c: int) -> None:
        for ids in prompts[c * per_client:(c + 1) * per_client]:
            r = send(ids)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.error is None and r.times]
    lat, ttft = [r.times[-1] - r.t0 for r in ok], [r.times[0] - r.t0 for r in ok]
    tpot = [(r.times[-1] - r.times[0]) / (len(r.times) - 1) for r in ok if len(r.times) > 1]
    tokens = sum(len(r.times) for r in ok)
    return dict(clients=clients, requests=len(results), errors=len(results) - len(ok), tokens=tokens, wall_s=wall,
                tokens_per_s=tokens / wall, latency_p50_s=pct(lat, .5), latency_p95_s=pct(lat, .95),
                ttft_p50_s=pct(ttft, .5), ttft_p95_s=pct(ttft, .95), tpot_p50_s=pct(tpot, .5),
                tpot_p95_s=pct(tpot, .95))


def long_prompt_round(model, tokenizer, running: list, long_ids: torch.Tensor, chunk: int | None, warm: int,
                      after: int = 4) -> dict:
    """len(running) streams decode; once each has `warm` tokens the long prompt arrives. -> the running streams'
    TPOT before it and while it is admitted (arrival -> its first token), their longest gap, its TTFT."""
    max_len = model.max_context
    engine = BatchEngine(model, tokenizer, slots=len(running) + 1, max_len=max_len, prefill_chunk=chunk).start()
    try:
        streams = []              # (clock, request): they run until cancelled, past the long prompt's first token
        for ids in running:
            t = Timed()
            streams.append((t, Request(ids, SamplingParams(max_tokens=max_len - ids.shape[1] - 1, temperature=0,
                                                           ignore_eos=True), t)))
            engine.submit(streams[-1][1])
        _wait(lambda: all(len(s.times) >= warm for s, _ in streams), "the running streams' first tokens")
        long = Timed()
        engine.submit(Request(long_ids, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True), long))
        _wait(lambda: bool(long.times), "the long prompt's first token")
        t_first = long.times[0]
        _wait(lambda: all(sum(x > t_first for x in s.times) >= after for s, _ in streams), "tokens after it")
        for _, req in streams:
            req.cancel()
        long.done.wait(600)
    finally:
        engine.stop()
    before, during, gaps = [], [], []
    for s, _ in streams:
        ts = list(s.times)
        pre = [b - a for a, b in zip(ts, ts[1:]) if b <= long.t0]
        before += pre[1:]                      # the first gap can hold the other streams' prefills
        n_in = sum(long.t0 < x <= t_first for x in ts)
        during.append((t_first - long.t0) / max(n_in, 1))
        gaps.append(max(b - a for a, b in zip(ts, ts[1:]) if b > long.t0 and a <= t_first))
    return dict(chunk=chunk or 0, running=len(running), long_prompt=int(long_ids.shape[1]),
                tpot_before_s=statistics.median(before) if before else float("nan"),
                tpot_admitting_s=statistics.fmean(during), longest_gap_s=max(gaps), long_ttft_s=t_first - long.t0,
                prefill_chunks=engine.stats.prefill_chunks)


def _wait(cond, what: str, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.002)


def transformers_prefill_s(model, ids: torch.Tensor) -> float:
    """transformers alone: time to the first token of `ids` (its prefill), best of two."""
    send = transformers_sender(model, 1, threading.Lock())
    return min(t.times[0] - t.t0 for t in (send(ids), send(ids)))


def fmt_load(r: dict) -> str:
    return (f"| {r['impl']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
            f"{r['latency_p50_s']:.2f} s | {r['latency_p95_s']:.2f} s | {r['ttft_p50_s'] * 1e3:.0f} ms | "
            f"{r['ttft_p95_s'] * 1e3:.0f} ms | "
            f"{r['tpot_p50_s'] * 1e3:.1f} ms | {r['tpot_p95_s'] * 1e3:.1f} ms | {r['errors']} |")


def fmt_long(r: dict) -> str:
    return (f"| {'chunked, ' + str(r['chunk']) + ' tokens/step' if r['chunk'] else 'unchunked'} | {r['running']} | "
            f"{r['long_prompt']} | {r['tpot_before_s'] * 1e3:.1f} ms | {r['tpot_admitting_s'] * 1e3:.1f} ms | "
            f"{r['longest_gap_s'] * 1e3:.0f} ms | {r['long_ttft_s']:.2f} s | {r['prefill_chunks']} |")


def main_serve(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ocellus bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--via", choices=["engine", "server"], default="engine",
                   help="the load section: the engine in this process, or `ocellus serve` over HTTP")
    p.add_argument("--clients", default="1,16", help="comma list of concurrent client counts")
    p.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens of a load request")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens each load request decodes")
    p.add_argument("--long-prompt", type=int, default=2000, help="tokens of the prompt that arrives mid-stream")
    p.add_argument("--running", type=int, default=4, help="streams decoding when it arrives")
    p.add_argument("--chunk", default="256", help="chunked prefill: prompt tokens per engine step (a comma list: "
                                                  "each in the long-prompt section, the first in the load section)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (the server's OMP_NUM_THREADS)")
    p.add_argument("--skip-transformers", action="store_true", help="ours only")
    p.add_argument("--skip-long", action="store_true", help="no long-prompt section")
    p.add_argument("--quick", action="store_true", help="tiny model, few short requests: the numbers mean nothing")
    p.add_argument("--workdir", default=None, help="where the random checkpoint is built (default $OCELLUS_BENCH_DIR)")
    p.add_argument("--json", default=None, help="write every figure to this file")
    a = p.parse_args(argv)
    arch = LLAMA_TINY if a.quick else LLAMA_100M
    if a.quick:
        a.per_client, a.prompt, a.max_tokens = 1, min(a.prompt, 16), min(a.max_tokens, 8)
        a.long_prompt, a.running, a.chunk = min(a.long_prompt, 200), min(a.running, 2), "48"
    if a.threads:
        torch.set_num_threads(a.threads)
    # lazy: the package root (load) is imported by the command that runs, as in bench.py
    import ocellus
    import transformers   # the reference, needed by this benchmark only
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = build_checkpoint(arch, Path(a.workdir) if a.workdir else default_workdir())
    path = serving_copy(path)
    tok = word_tokenizer(path, arch["vocab_size"])
    dtype, counts = DTYPES[a.dtype], [int(c) for c in a.clients.split(",")]
    chunks = [int(c) for c in a.chunk.split(",")]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, arch["vocab_size"], (1, a.prompt), generator=g).to(a.device)
               for _ in range(max(counts) * a.per_client)]
    print(f"# {path.name}, {a.dtype} on {a.device}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.1f}; torch {torch.__version__}; load via {a.via}; prompt {a.prompt}, "
          f"{a.max_tokens} tokens a request, {a.per_client} requests a client", flush=True)
    model = ocellus.load(path, dtype=dtype, device=a.device)
    out = {"load": [], "long": [], "transformers_long_prefill_s": None, "args": vars(a)}
    if a.via == "engine":
        engine = BatchEngine(model, tok, slots=max(counts), max_len=a.prompt + a.max_tokens + 1, max_queue=1024,
                             prefill_chunk=chunks[0]).start()
        send, stop = engine_sender(engine, a.max_tokens), engine.stop
    else:
        srv = ServerProcess("--model", str(path), "--model-name", "bench", "--slots", str(max(counts)), "--dtype",
                            a.dtype, "--max-context", str(a.prompt + a.max_tokens + 1), "--max-queue", "1024",
                            "--max-tokens", str(a.max_tokens), "--request-timeout", "3600", "--prefill-chunk",
                            str(chunks[0]), env={"OMP_NUM_THREADS": str(a.threads or torch.get_num_threads())})
        send, stop = http_sender(srv.url, a.max_tokens), srv.stop
    try:
        send(prompts[0])                                       # warm-up
        for c in counts:
            out["load"].append(dict(impl=f"ocellus ({a.via})", **load_round(send, prompts, c, a.per_client)))
            print(fmt_load(out["load"][-1]), flush=True)
    finally:
        stop()
    theirs = None
    if not a.skip_transformers:
        theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        theirs = theirs.to(a.device).eval()
        hf = transformers_sender(theirs, a.max_tokens, threading.Lock())
        hf(prompts[0])                                         # warm-up
        for c in counts:
            out["load"].append(dict(impl="transformers, one at a time", **load_round(hf, prompts, c, a.per_client)))
            print(fmt_load(out["load"][-1]), flush=True)
    if not a.skip_long:
        running = [torch.randint(1, arch["vocab_size"], (1, 64 if not a.quick else 8), generator=g).to(a.device)
                   for _ in range(a.running)]
        long_ids = torch.randint(1, arch["vocab_size"], (1, a.long_prompt), generator=g).to(a.device)
        for chunk in (*chunks, None):
            out["long"].append(long_prompt_round(model, tok, running, long_ids, chunk, warm=4))
            print(fmt_long(out["long"][-1]), flush=True)
        if theirs is not None:
            out["transformers_long_prefill_s"] = transformers_prefill_s(theirs, long_ids)
    print(report(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


def report(out: dict) -> str:
    lines = ["", "| implementation | clients | requests | tokens/s | latency p50 | latency p95 | TTFT p50 | TTFT p95 | "
             "TPOT p50 | TPOT p95 | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [fmt_load(r) for r in out["load"]]
    for impl in dict.fromkeys(r["impl"] for r in out["load"]):
        rate = {r["clients"]: r["tokens_per_s"] for r in out["load"] if r["impl"] == impl}
        lo, hi = min(rate), max(rate)
        if lo != hi:
            lines.append(f"{impl}: {hi} clients = {rate[hi] / rate[lo]:.2f}x the tokens/s of {lo}")
    if out["long"]:
        lines += ["", "| prefill | running streams | long prompt | their TPOT before | "
                  "their TPOT while it is admitted | "
                  "their longest gap | its TTFT | prefill forwards |", "|---|---|---|---|---|---|---|---|"]
        lines += [fmt_long(r) for r in out["long"]]
        if out["transformers_long_prefill_s"] is not None:
            lines.append(f"transformers, one at a time: the long prompt's prefill alone "
                         f"{out['transformers_long_prefill_s']:.2f} s (the running streams would finish first)")
    return "\n".join(lines)
