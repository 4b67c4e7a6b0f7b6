"""Chunked prefill (issue 21 item 3): ocellus/infer/chunked_prefill.py and the prefill budget of the batching engine
(ocellus/infer/batching.py), guarded by tests/serve/test_chunked_prefill.py."""
from mutations import Mutation

CHUNKED = "tests/serve/test_chunked_prefill.py"
BENCH = "tests/unit/test_bench_serve.py"
PREFILL = "ocellus/infer/chunked_prefill.py"
ENGINE = "ocellus/infer/batching.py"

MUTATIONS = [
    Mutation(name="chunked prefill: chunk positions off by one", file=PREFILL,
             old="pos = torch.arange(a, b, device=self.device)[None]",
             new="pos = torch.arange(a + 1, b + 1, device=self.device)[None]", tests=[CHUNKED]),
    Mutation(name="chunked prefill: every chunk's positions restart at 0", file=PREFILL,
             old="pos = torch.arange(a, b, device=self.device)[None]",
             new="pos = torch.arange(0, n, device=self.device)[None]", tests=[CHUNKED]),
    Mutation(name="chunked prefill: a chunk reads the prompt from its start", file=PREFILL,
             old="out = self.model(input_ids=self.ids[:, a:b]", new="out = self.model(input_ids=self.ids[:, :n]",
             tests=[CHUNKED]),
    Mutation(name="chunked prefill: a chunk does not see the chunks before it", file=PREFILL,
             old="position_ids=pos, cache=self.cache, logits_to_keep=1,",
             new="position_ids=pos, cache=self.model.new_cache(1, n), logits_to_keep=1,", tests=[CHUNKED]),
    Mutation(name="chunked prefill: a prompt with images split by the budget", file=PREFILL,
             old="if budget is None or not self.splittable:", new="if budget is None:", tests=[CHUNKED]),
    Mutation(name="chunked prefill: the budget is never spent (long prompt in one forward)", file=ENGINE,
             old="                budget -= n\n", new="                budget -= 0\n", tests=[CHUNKED]),
    Mutation(name="chunked prefill: a part-way prompt does not wake the engine", file=ENGINE,
             old="self._waiting or self._rows or self._partial):", new="self._waiting or self._rows):",
             tests=[CHUNKED]),
    Mutation(name="chunked prefill: a request cancelled mid-prefill still takes a slot", file=ENGINE,
             old="if self._partial is not None and gone(self._partial[0]):",
             new="if False and self._partial is not None:", tests=[CHUNKED]),
    Mutation(name="chunked prefill: a prompt placed after its first chunk", file=ENGINE,
             old="            if job.finished:\n                self._set_partial(None)",
             new="            if job.done:\n                self._set_partial(None)", tests=[CHUNKED]),
    Mutation(name="serve bench: the chunked long-prompt round runs unchunked", file="ocellus/bench_serve.py",
             old="prefill_chunk=chunk).start()", new="prefill_chunk=None).start()", tests=[BENCH]),
    Mutation(name="serve bench: a round counts requests as tokens", file="ocellus/bench_serve.py",
             old="tokens = sum(len(r.times) for r in ok)", new="tokens = len(ok)", tests=[BENCH]),
    Mutation(name="serve: --prefill-chunk never reaches the limits", file="ocellus/cli.py",
             old="prefill_chunk=args.prefill_chunk or None,", new="prefill_chunk=None,",
             tests=[f"{CHUNKED}::test_serve_flag_reaches_the_engine"]),
    Mutation(name="serve: the engine built without the limits' prefill chunk", file="ocellus/serve/app.py",
             old="max_queue=limits.max_queue, prefill_chunk=limits.prefill_chunk)", new="max_queue=limits.max_queue)",
             tests=[f"{CHUNKED}::test_serve_flag_reaches_the_engine"]),
]
