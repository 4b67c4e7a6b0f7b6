"""Chunked prefill (infer/chunked_prefill.py, BatchEngine(prefill_chunk=C)): a long prompt is prefilled a chunk
per engine loop while the running rows decode between its chunks.

Two properties: (1) correctness: a prompt prefilled in chunks leaves the same keys/values and last logits as one
forward over the whole prompt, and every request decoded by a chunking engine gets the ids `generate` gives it
alone; (2) the point of it: a request already decoding keeps getting tokens while the long prompt is admitted.
(2) is counted in decode steps, not timed: every forward the engine runs is logged by a forward pre-hook, and
the long prompt arrives from inside that hook at a fixed decode step (as in test_engine_scheduling.py).
"""
from __future__ import annotations

import math
import threading

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError, InputError
from ocellus.infer.batching import BatchEngine, Delta, Finish, Request, SamplingParams
from ocellus.infer.chunked_prefill import ChunkedPrefill
from ocellus.infer.generate import generate
from ocellus.infer.slot_cache import SlotKVCache
from tests.parity._init import spread_init
from _engine_run import run_with_hook


@pytest.fixture(scope="module")
def tokenizer():
    return ocellus.load_processor(ocellus.default_model_dir()).tokenizer


def decoder(vocab: int, context: int = 256):
    """A tiny GQA Llama whose attention is far from uniform (spread_init): a key at the wrong position or a
    chunk that does not see the chunks before it moves the logits by far more than float noise."""
    from ocellus.hub.families import family_for_config
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": context, "eos_token_id": None, "pad_token_id": 0, "tie_word_embeddings": False}
    torch.manual_seed(0)
    return spread_init(family_for_config(cfg).build(cfg).eval(), qk_gain=2.0)


def prompt(vocab: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(4, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk", [1, 7, 16, 100])
def test_chunks_leave_the_one_shot_cache_and_logits(tokenizer, chunk):
    model = decoder(tokenizer.vocab_size)
    ids = prompt(tokenizer.vocab_size, 53, seed=1)
    with torch.inference_mode():
        whole = model(input_ids=ids).logits[:, -1]                                  # no cache: [1, V]
        one = ChunkedPrefill(model, ids)
        one.run(one.total)
        parts, sizes = ChunkedPrefill(model, ids), []
        while not parts.finished:
            sizes.append(parts.next_chunk(chunk))
            parts.run(sizes[-1])
    assert sizes == [min(chunk, 53 - a) for a in range(0, 53, chunk)]
    assert parts.cache.length == one.cache.length == 53
    torch.testing.assert_close(one.logits, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.logits, one.logits, rtol=1e-5, atol=1e-5)
    for layer in range(2):
        torch.testing.assert_close(parts.cache.k[layer], one.cache.k[layer], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(parts.cache.v[layer], one.cache.v[layer], rtol=1e-5, atol=1e-5)
    # the logits are far apart between positions: an off-by-one key would not pass as noise
    assert (one.logits - model(input_ids=ids[:, 1:]).logits[:, -1]).abs().max() > 0.1


def test_bad_chunks_and_budgets_are_refused(tokenizer):
    model = decoder(tokenizer.vocab_size)
    job = ChunkedPrefill(model, prompt(tokenizer.vocab_size, 5, seed=2))
    with pytest.raises(InputError, match="a chunk of 6 tokens: 5 of this prompt's 5 are left"):
        job.run(6)
    imaged = ChunkedPrefill(model, prompt(tokenizer.vocab_size, 5, seed=2), extra={"pixel_values": torch.zeros(1)})
    assert imaged.next_chunk(2) == 5
    with pytest.raises(InputError, match="a prompt with images is prefilled in one chunk"):
        imaged.run(2)
    with pytest.raises(InputError, match=r"input_ids \[1, T\]"):
        ChunkedPrefill(model, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="prefill_chunk must be a positive int, got 0"):
        BatchEngine(model, tokenizer, prefill_chunk=0)


def run_with_long_arrival(tokenizer, chunk: int | None, long_len: int = 100):
    """slots=2. A (6 prompt tokens, 30 new) decodes alone; in its 3rd decode step L (long_len prompt tokens, 5 new)
    arrives. -> (the engine's forwards in order: ("decode", rows) or ("prefill", tokens); Finish of A and L)."""
    model = decoder(tokenizer.vocab_size)
    prompts = {"A": prompt(tokenizer.vocab_size, 6, seed=3), "L": prompt(tokenizer.vocab_size, long_len, seed=4)}
    budget = {"A": 30, "L": 5}
    engine = BatchEngine(model, tokenizer, slots=2, max_len=160, prefill_chunk=chunk)
    log, finished, all_done = [], {}, threading.Event()

    def request(name):
        def sink(event):
            if isinstance(event, Finish):
                finished[name] = event
                if len(finished) == 2:
                    all_done.set()
        return Request(prompts[name], SamplingParams(max_tokens=budget[name], temperature=0), sink)

    def record(module, args, kwargs):          # on the engine thread, before every forward
        ids = kwargs["input_ids"]
        if isinstance(kwargs["cache"], SlotKVCache):
            log.append(("decode", ids.shape[0]))
            if log.count(("decode", 1)) == 3 and len(log) == 4:   # A's 3rd decode step: L arrives
                engine.submit(request("L"))
        else:
            log.append(("prefill", ids.shape[1]))
    run_with_hook(engine, model, record, request("A"), all_done)
    for name, ids in prompts.items():
        want = generate(model, ids, max_new_tokens=budget[name])[0, ids.shape[1]:].tolist()
        assert list(finished[name].token_ids) == want, name
    return log, finished, engine.stats


def steps_of_a_while_l_is_admitted(log) -> int:
    """A's decode steps between L's first prefill chunk and L's first decode step (the batch of 2)."""
    first_chunk = next(i for i, e in enumerate(log) if e[0] == "prefill" and i > 0)
    first_pair = log.index(("decode", 2))
    return sum(e == ("decode", 1) for e in log[first_chunk:first_pair])


@pytest.mark.parametrize("chunk", [16, 32])
def test_running_stream_decodes_while_a_long_prompt_is_admitted(tokenizer, chunk):
    """L's 100 tokens in chunks of C: one decode step of A after every chunk but the last, so A gets
    ceil(100 / C) - 1 tokens between L's admission and L's first token; L then joins A's batch for its 4 decode
    steps. Without a budget L is one forward and A gets none meanwhile. Both streams' ids equal generate()."""
    log, finished, stats = run_with_long_arrival(tokenizer, chunk)
    chunks = [min(chunk, 100 - a) for a in range(0, 100, chunk)]
    want = [("prefill", 6)] + [("decode", 1)] * 3
    for c in chunks[:-1]:
        want += [("prefill", c), ("decode", 1)]
    want += [("prefill", chunks[-1])] + [("decode", 2)] * 4
    want += [("decode", 1)] * (29 - 3 - (len(chunks) - 1) - 4)          # A's 29 decode steps in all
    assert log == want
    assert steps_of_a_while_l_is_admitted(log) == math.ceil(100 / chunk) - 1
    assert stats.prefill_chunks == 1 + len(chunks) and stats.prefilling == 0


def test_without_a_budget_the_long_prompt_stalls_the_stream(tokenizer):
    log, _, stats = run_with_long_arrival(tokenizer, None)
    assert log[:6] == [("prefill", 6)] + [("decode", 1)] * 3 + [("prefill", 100), ("decode", 2)]
    assert steps_of_a_while_l_is_admitted(log) == 0 and stats.prefill_chunks == 2


def test_a_lone_long_prompt_is_prefilled_to_the_end(tokenizer):
    """No other row decodes between the chunks: the engine must still come back for the next one."""
    model = decoder(tokenizer.vocab_size)
    ids = prompt(tokenizer.vocab_size, 90, seed=5)
    engine = BatchEngine(model, tokenizer, slots=1, max_len=128, prefill_chunk=20).start()
    done, out = threading.Event(), []
    try:
        engine.submit(Request(ids, SamplingParams(max_tokens=6, temperature=0),
                              lambda e: (out.append(e), done.set()) if isinstance(e, Finish) else None))
        assert done.wait(30), "the prompt's later chunks never ran"
    finally:
        engine.stop()
    assert list(out[0].token_ids) == generate(model, ids, max_new_tokens=6)[0, 90:].tolist()
    assert engine.stats.prefill_chunks == 5


def test_a_request_cancelled_mid_prefill_leaves_without_a_slot(tokenizer):
    """L is cancelled after its 2nd chunk: it gets no event, takes no slot, and A decodes on to its end."""
    model = decoder(tokenizer.vocab_size)
    a_ids, l_ids = prompt(tokenizer.vocab_size, 6, seed=6), prompt(tokenizer.vocab_size, 80, seed=7)
    engine = BatchEngine(model, tokenizer, slots=2, max_len=128, prefill_chunk=16)
    l_events, a_done, a_fin = [], threading.Event(), []
    long = Request(l_ids, SamplingParams(max_tokens=5, temperature=0), l_events.append)
    chunks = []

    def record(module, args, kwargs):
        if not isinstance(kwargs["cache"], SlotKVCache):
            chunks.append(kwargs["input_ids"].shape[1])
            if len(chunks) == 3:               # L's 2nd chunk (A's prefill came first)
                long.cancel()
        elif len(chunks) == 1 and kwargs["input_ids"].shape[0] == 1:
            engine.submit(long)
    run_with_hook(engine, model, record, Request(a_ids, SamplingParams(max_tokens=12, temperature=0),
                  lambda e: (a_fin.append(e), a_done.set()) if isinstance(e, Finish) else None), a_done, timeout=30)
    assert chunks == [6, 16, 16] and l_events == []
    assert engine.stats.cancelled == 1 and engine.stats.prefilling == 0 and engine.cache.active == 0
    assert list(a_fin[0].token_ids) == generate(model, a_ids, max_new_tokens=12)[0, 6:].tolist()


def test_a_prompt_with_an_image_is_one_chunk():
    """Image features are spliced over the whole prompt: a budget below the prompt's length still prefills it in
    one forward, and the answer equals the unchunked engine's."""
    d = ocellus.default_model_dir()
    model, proc = ocellus.load(d), ocellus.load_processor(d)
    from tests.serve.conftest import shape_image
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
                 images=[shape_image()])
    answers = {}
    for chunk in (None, 8):
        engine = BatchEngine(model, proc.tokenizer, slots=2, prefill_chunk=chunk).start()
        done, out = threading.Event(), []
        try:
            engine.submit(Request(batch["input_ids"], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True),
                                  lambda e: (out.append(e), done.set()) if not isinstance(e, Delta) else None,
                                  prefill={"pixel_values": batch["pixel_values"]}))
            assert done.wait(60)
        finally:
            engine.stop()
        assert isinstance(out[0], Finish), out
        answers[chunk] = out[0].token_ids
        assert engine.stats.prefill_chunks == 1
    assert answers[8] == answers[None] and len(answers[8]) == 8


def test_serve_flag_reaches_the_engine(monkeypatch):
    """`ocellus serve --prefill-chunk N` (default 256, 0 = whole prompts) -> ServeLimits -> the server's engine."""
    from ocellus import cli
    from ocellus.serve import app
    from ocellus.serve.limits import ServeLimits
    seen = []
    monkeypatch.setattr(app, "serve", lambda *a, limits, **kw: seen.append(limits))
    for flags, want in (([], 256), (["--prefill-chunk", "64"], 64), (["--prefill-chunk", "0"], None)):
        args = cli.build_parser().parse_args(["serve", *flags])
        args.func(args)
        assert seen.pop().prefill_chunk == want, flags
    with pytest.raises(ConfigError, match="serve limit prefill_chunk must be a positive int, got -3"):
        ServeLimits(prefill_chunk=-3)
    d = ocellus.default_model_dir()
    state = app.ServeState(ocellus.load(d), ocellus.load_processor(d), "m", ServeLimits(prefill_chunk=64))
    assert state.engine.prefill_chunk == 64
