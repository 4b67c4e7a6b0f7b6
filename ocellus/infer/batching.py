"""The continuous-batching engine: requests join and leave one running decode batch at token boundaries.

Iteration-level scheduling as in Orca (Yu et al. 2022) and vLLM / text-generation-inference's
routers: a background thread owns the model and a `SlotKVCache` (infer/slot_cache.py) and loops

    1. run queued exclusive jobs (e.g. the attention heat map, which hooks the model);
    2. drop cancelled / timed-out requests (their rows leave the batch now);
    3. admit waiting requests while slots are free: prefill each alone (its images are encoded
       here, once, and shared by its n choices), pick the first token from the prefill logits
       (that is the time to first token) and copy the prompt's keys/values into n free slots.
       With `prefill_chunk` = C, prompts take at most C prefill tokens per loop (infer/chunked_prefill.py):
       a long prompt is prefilled a chunk per loop, in queue order, and step 4 keeps the running rows
       decoding between its chunks;
    4. one decode step over every live row: [B, 1] ids, per-row positions, the slot mask;
    5. per row: sample with the row's own parameters (greedy rows share one argmax), detokenize
       incrementally, apply eos / stop strings / max_tokens, and retire finished rows.

Per-request sampling matches `infer.generate`: the same logit processors (infer/sampling.py) in the
same order, and a seeded request draws from its own `torch.Generator` seeded like `generate(seed=)`,
so a request's ids do not depend on which other requests share its batch (tests/serve/test_engine.py).

Results leave through a `sink(event)` callable the submitter passes in, called on this thread:
`Delta(choice, text)`, `Finish(choice, reason, completion_tokens)` and `Failure(status, message)`.

A row's failure ends that row's request only: non-finite logits (a model fault, 500) or sampling
parameters that overflow float32 into NaN probabilities (the request's fault, 400) fail its request and
the other rows of the step decode on. Temperatures below SAMPLING_EPS decode greedily, as vLLM's do
(1 / T would overflow).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import torch

from ocellus.errors import InputError, OcellusError, positive_int
from ocellus.infer.chunked_prefill import ChunkedPrefill
from ocellus.infer.engine_request import (NON_FINITE_LOGITS, SAMPLING_EPS, Delta, Failure, Finish, Request, RowError,
                                          SamplingParams, Sequence, failure_of)
from ocellus.infer.generate import resolve_config
from ocellus.infer.prepack import prepare_decode
from ocellus.infer.slot_cache import SlotKVCache

__all__ = ["BatchEngine", "EngineStats", "QueueFull", "Request", "SamplingParams", "Delta", "Finish", "Failure",
           "RowError", "NON_FINITE_LOGITS", "SAMPLING_EPS"]


class QueueFull(OcellusError):
    """The engine's waiting queue is at its limit (a server answers 429)."""


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    completed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failed: int = 0
    steps: int = 0
    generated_tokens: int = 0
    prefilling: int = 0        # requests part-way through a chunked prefill (0 or 1)
    prefill_chunks: int = 0    # prefill forwards run (one per prompt without a chunk budget)


class BatchEngine:
    """model: anything with the `generate` contract whose `new_cache` is a plain StaticKVCache.
    tokenizer: decodes ids to text. slots: the most rows decoded together (1 = one request at a
    time). max_len: tokens per slot (prompt + completion), at most the model's context. max_queue:
    waiting requests beyond which `submit` raises QueueFull. prefill_chunk: the most prompt tokens prefilled
    per engine loop, between two decode steps (None: each admitted prompt whole, in one forward).
    prepack: on CPU, decode with oneDNN-prepacked fused weights packed for `slots` rows (infer/prepack.py)."""

    def __init__(self, model, tokenizer, *, slots: int = 16, max_len: int | None = None, max_queue: int = 64,
                 prefill_chunk: int | None = None, prepack: bool = True):
        self.model, self.tokenizer, self.prepack = model, tokenizer, prepack
        prepare_decode(model, slots, prepack)
        self.prefill_chunk = positive_int(prefill_chunk, "prefill_chunk", optional=True)
        self.max_len = min(max_len or model.max_context, model.max_context)
        self.cache = SlotKVCache.like(model, slots, self.max_len)
        self.device = next(model.parameters()).device
        self.eos = tuple(resolve_config(model, {}).eos_token_id or ())   # generation_config.json's list too
        self.max_queue = max_queue
        self.stats = EngineStats()
        self._waiting: deque[Request] = deque()
        self._jobs: deque[tuple[Callable, Future]] = deque()
        self._rows: list[Sequence] = []      # row i of the cache decodes _rows[i]
        self._partial: tuple[Request, ChunkedPrefill] | None = None  # the queue's head, part-way prefilled
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- the submitting side (any thread) ----------------------------------------------------------
    def start(self) -> "BatchEngine":
        self._thread = threading.Thread(target=self._loop, name="ocellus-batch-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, req: Request) -> None:
        if req.n > self.cache.slots:
            raise InputError(f"n={req.n} choices need {req.n} decode slots; this server has {self.cache.slots}")
        if req.prompt_tokens + req.params.max_tokens > self.max_len:
            raise InputError(f"the prompt is {req.prompt_tokens} tokens; with max_tokens={req.params.max_tokens} it "
                             f"exceeds the context of {self.max_len} tokens")
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} waiting requests); retry later")
            self._waiting.append(req)
            self.stats.waiting = len(self._waiting)
            self._cv.notify()

    def call(self, fn: Callable[[], object]) -> Future:
        """Run fn() on the engine thread between two decode steps (it may use the model alone)."""
        fut: Future = Future()
        with self._cv:
            self._jobs.append((fn, fut))
            self._cv.notify()
        return fut

    # -- the engine thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._stop or self._jobs or self._waiting or self._rows or self._partial):
                        self._cv.wait()
                    if self._stop:
                        break
                    jobs, self._jobs = list(self._jobs), deque()
                for fn, fut in jobs:
                    self._run_job(fn, fut)
                if jobs:   # a job's own generate (an attention map) packs for its batch: back to the slots'
                    prepare_decode(self.model, self.cache.slots, self.prepack)
                self._expire()
                self._admit()
                if self._rows:
                    try:
                        self._step()
                    except Exception as e:  # a model bug: fail the batch, keep serving
                        while self._rows:
                            self._fail(self._rows[-1].req, failure_of(e))
        for fn, fut in self._jobs:
            fut.set_exception(RuntimeError("the engine stopped"))

    @staticmethod
    def _run_job(fn, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as e:  # handed to the caller, who decides what it means
            fut.set_exception(e)

    def _expire(self) -> None:
        """Cancelled or timed-out requests leave the queue and the batch now."""
        now = time.monotonic()

        def gone(r: Request) -> bool:
            return r.cancelled or (r.deadline is not None and now > r.deadline)

        with self._cv:
            dropped = [r for r in self._waiting if gone(r)]
            self._waiting = deque(r for r in self._waiting if not gone(r))
            self.stats.waiting = len(self._waiting)
        if self._partial is not None and gone(self._partial[0]):  # it holds no slot yet
            dropped.append(self._partial[0])
            self._set_partial(None)
        for r in dropped:
            self._finish_request(r, "timeout" if not r.cancelled else None)
        for i in reversed(range(len(self._rows))):
            if gone(self._rows[i].req):
                req = self._rows[i].req
                self._retire(i, "timeout" if not req.cancelled else None)

    def _admit(self) -> None:
        """Prefill waiting requests in queue order while slots are free, at most `prefill_chunk` prompt tokens
        in all (None: no limit). A prompt the budget cuts stays the head (`_partial`) and goes on next loop,
        after a decode step of the running rows; nothing behind it is admitted before it."""
        budget = self.prefill_chunk
        while budget is None or budget > 0:
            if self._partial is None:
                with self._cv:
                    if not self._waiting or self._waiting[0].n > self.cache.free:
                        return
                    req = self._waiting.popleft()
                    self.stats.waiting = len(self._waiting)
                if not self._guarded(req, lambda: self._set_partial((req, ChunkedPrefill(
                        self.model, req.input_ids, req.prefill, self.device)))):
                    continue
            req, job = self._partial
            n = job.next_chunk(budget)
            if budget is not None and n > budget and budget < self.prefill_chunk:
                return  # a prompt that cannot be split (images) waits for a whole budget
            if not self._guarded(req, lambda: job.run(n)):
                continue
            self.stats.prefill_chunks += 1
            if budget is not None:
                budget -= n
            if job.finished:
                self._set_partial(None)
                self._guarded(req, lambda: self._place(req, job.cache, job.logits))

    def _guarded(self, req: Request, fn: Callable[[], object]) -> bool:
        """fn(); an error fails `req` alone (400 for bad input, else 500) and drops its prefill. -> it ran."""
        try:
            fn()
            return True
        except Exception as e:  # a model bug must not take the other requests down with it
            if self._partial is not None and self._partial[0] is req:
                self._set_partial(None)
            self._fail(req, Failure(400, str(e)) if isinstance(e, InputError) else failure_of(e))
            return False

    def _set_partial(self, partial: tuple[Request, ChunkedPrefill] | None) -> None:
        self._partial = partial
        self.stats.prefilling = int(partial is not None)

    def _place(self, req: Request, prefilled, logits: torch.Tensor) -> None:
        """The prompt is prefilled: its n choices take their first token from `logits` [1, V] and a slot each."""
        for c in range(req.n):
            seq = Sequence(req, c, self.tokenizer, self.eos)
            self.cache.insert(prefilled)
            self._rows.append(seq)
            self.stats.running = len(self._rows)
            reason = seq.push(seq.choose(logits), self.max_len)
            self.stats.generated_tokens += 1
            if reason is not None:
                self._retire(len(self._rows) - 1, reason)

    def _step(self) -> None:
        self.cache.make_room(1)
        rows = self._rows
        ids = torch.tensor([[s.ids[-1]] for s in rows], device=self.device)                # [B, 1]
        pos = torch.tensor([[len(s.ids) - 1] for s in rows], device=self.device)           # [B, 1]
        logits = self.model(input_ids=ids, attention_mask=self.cache.attention_mask(self.device), position_ids=pos,
                            cache=self.cache, logits_to_keep=1).logits[:, -1].float().cpu()  # [B, V]
        self.stats.steps += 1
        argmax = logits.argmax(-1).tolist()  # one batched argmax serves every plain-greedy row
        finite = torch.isfinite(logits).all(-1).tolist()
        finished, failed = {}, {}  # row -> finish reason; request -> Failure (its other rows leave too)
        for i, s in enumerate(rows):
            if s.req in failed:
                continue
            try:
                if not finite[i]:
                    raise RowError(500, NON_FINITE_LOGITS)
                token = argmax[i] if s.p.plain_argmax else s.choose(logits[i:i + 1])
            except Exception as e:  # this row's request fails; the other rows decode on
                failed[s.req] = failure_of(e)
                continue
            self.stats.generated_tokens += 1
            reason = s.push(token, self.max_len)
            if reason is not None:
                finished[i] = reason
        for i in reversed(range(len(rows))):  # from the end: a removal moves the last row into the gap
            if rows[i].req in failed:
                self._drop_row(i)
            elif i in finished:
                self._retire(i, finished[i])
        for req, failure in failed.items():
            self._fail(req, failure)

    def _retire(self, i: int, reason: str | None) -> None:
        """Row i leaves the batch; reason None = cancelled (nothing more is sent)."""
        seq = self._drop_row(i)
        req = seq.req
        if reason is None:
            if not req.done:  # count the request once, when its first row goes
                self.stats.cancelled += 1
            req.done += 1
            return
        if reason == "timeout" and not req.done:
            self.stats.timed_out += 1
        req.done += 1
        req.sink(Finish(seq.choice, reason, seq.generated, tuple(seq.ids[seq.prompt_len:])))
        if req.done == req.n and reason != "timeout":
            self.stats.completed += 1

    def _drop_row(self, i: int) -> Sequence:
        seq = self._rows[i]
        moved = self.cache.remove(i)
        if moved is not None:
            self._rows[i] = self._rows[moved]
        self._rows.pop()
        self.stats.running = len(self._rows)
        return seq

    def _finish_request(self, req: Request, reason: str | None) -> None:
        """A request that never reached the batch."""
        if reason is None:
            self.stats.cancelled += 1
            return
        self.stats.timed_out += 1
        for c in range(req.n):
            req.sink(Finish(c, reason, 0))

    def _fail(self, req: Request, failure: Failure) -> None:
        for i in reversed(range(len(self._rows))):  # choices already placed (a failure after insert)
            if i < len(self._rows) and self._rows[i].req is req:
                self._drop_row(i)
        self.stats.failed += 1
        req.sink(failure)
