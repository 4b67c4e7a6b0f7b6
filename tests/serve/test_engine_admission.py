"""The batch engine's admission and bookkeeping, in process on a random tiny decoder: the limits at their exact
values (n equal to the slots, prompt + max_tokens equal to the context, max_queue waiting requests); waiting
requests admitted first come, first served; a queued request that times out ends every one of its choices, a
cancelled one is counted as cancelled and gets no events; a request counts as completed once, when its last
choice ends; a choice that ends at its first token leaves without disturbing the row decoding beside it."""
from __future__ import annotations

import time

import pytest
import torch

from ocellus.errors import InputError
from ocellus.infer.batching import BatchEngine, Finish, QueueFull, Request, SamplingParams
from tests.serve.test_engine import Collect, random_decoder, reference_ids, tokenizer  # noqa: F401 (fixture)

IDS = torch.tensor([[5, 6, 7]])


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def _wait(cond, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while not cond() and time.time() < deadline:
        time.sleep(0.002)
    assert cond()


def test_limits_hold_at_their_exact_values(tokenizer):
    engine = BatchEngine(random_decoder(tokenizer.vocab_size, 4, 2, context=64), tokenizer, slots=2, max_queue=2,
                         max_len=64)                                     # not started: submit only queues
    engine.submit(Request(IDS, greedy(61), Collect(2), n=2))            # n == slots; 3 + 61 == max_len
    with pytest.raises(InputError, match="n=3 choices need 3 decode slots"):
        engine.submit(Request(IDS, greedy(4), Collect(3), n=3))
    with pytest.raises(InputError, match="exceeds the context of 64"):
        engine.submit(Request(IDS, greedy(62), Collect()))
    engine.submit(Request(IDS, greedy(4), Collect()))                   # the second of max_queue = 2
    with pytest.raises(QueueFull):
        engine.submit(Request(IDS, greedy(4), Collect()))


def test_waiting_requests_are_admitted_in_queue_order(tokenizer):
    engine = BatchEngine(random_decoder(tokenizer.vocab_size, 4, 2), tokenizer, slots=1, max_len=64)
    order, sinks = [], []
    for k in range(4):
        sink = Collect()
        sinks.append(sink)
        engine.submit(Request(IDS, greedy(2), lambda e, k=k, s=sink: (order.append(k), s(e))))
    engine.start()                                                       # all four wait before the first admission
    try:
        assert all(s.done.wait(30) for s in sinks)
    finally:
        engine.stop()
    first_event = list(dict.fromkeys(order))
    assert first_event == [0, 1, 2, 3]


def test_queued_timeout_ends_every_choice_and_a_cancel_sends_nothing(tokenizer):
    engine = BatchEngine(random_decoder(tokenizer.vocab_size, 4, 2), tokenizer, slots=3, max_len=64)
    late, gone = Collect(3), Collect()
    engine.submit(Request(IDS, greedy(4), late, n=3, deadline=time.monotonic() - 1))   # expired while queued
    cancelled = Request(IDS, greedy(4), gone)
    cancelled.cancel()
    engine.submit(cancelled)
    engine.start()
    try:
        assert late.done.wait(30)
        _wait(lambda: engine.stats.waiting == 0 and engine.stats.cancelled == 1)
    finally:
        engine.stop()
    assert [(f.choice, f.reason, f.completion_tokens) for f in late.finishes()] == \
        [(0, "timeout", 0), (1, "timeout", 0), (2, "timeout", 0)]
    assert gone.events == [] and engine.stats.timed_out == 1 and engine.stats.cancelled == 1


def test_a_request_is_completed_once_when_its_last_choice_ends(tokenizer):
    engine = BatchEngine(random_decoder(tokenizer.vocab_size, 4, 2), tokenizer, slots=3, max_len=64).start()
    try:
        sink = Collect(3)
        engine.submit(Request(IDS, SamplingParams(max_tokens=5, temperature=1.0, seed=1, ignore_eos=True), sink,
                              n=3))
        assert sink.done.wait(30)
        _wait(lambda: engine.stats.running == 0)
    finally:
        engine.stop()
    assert [f.reason for f in sink.finishes()] == ["length"] * 3
    assert engine.stats.completed == 1


def test_a_choice_ending_at_its_first_token_leaves_the_running_row_alone(tokenizer):
    model = random_decoder(tokenizer.vocab_size, 4, 2)
    engine = BatchEngine(model, tokenizer, slots=2, max_len=64).start()
    try:
        long, short = Collect(), Collect()
        engine.submit(Request(IDS, greedy(40), long))
        _wait(lambda: engine.stats.running == 1)
        engine.submit(Request(torch.tensor([[9, 8]]), greedy(1), short))   # done by its prefill's token
        assert short.done.wait(30) and long.done.wait(60)
    finally:
        engine.stop()
    assert [(f.reason, f.completion_tokens) for f in short.finishes()] == [("length", 1)]
    assert list(long.finishes()[0].token_ids) == reference_ids(model, IDS, greedy(40))
    assert engine.stats.completed == 2 and engine.stats.running == 0


def test_each_decode_step_feeds_the_last_token_at_its_own_position(tokenizer):
    """RoPE reads position_ids: the token fed at a decode step is ids[-1], at index len(ids) - 1 of its row (a
    tiny random decoder's near-uniform attention hides an off-by-one there from an equality-with-generate test)."""
    model = random_decoder(tokenizer.vocab_size, 4, 2)
    fed = []
    forward = model.forward

    def spy(*args, **kwargs):
        if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[1] == 1:   # a decode step
            fed.append((kwargs["input_ids"][:, 0].tolist(), kwargs["position_ids"][:, 0].tolist()))
        return forward(*args, **kwargs)
    model.forward = spy
    engine = BatchEngine(model, tokenizer, slots=2, max_len=64)
    a, b = Collect(), Collect()
    engine.submit(Request(IDS, greedy(4), a))                               # 3 prompt tokens: row 0
    engine.submit(Request(torch.tensor([[9, 8, 7, 6, 5]]), greedy(4), b))   # 5 prompt tokens: row 1
    engine.start()                                                           # both admitted in its first loop
    try:
        assert a.done.wait(30) and b.done.wait(30)
    finally:
        engine.stop()
    ta, tb = a.finishes()[0].token_ids, b.finishes()[0].token_ids            # 4 each: the last one is never fed
    assert fed == [([ta[k], tb[k]], [3 + k, 5 + k]) for k in range(3)]
