"""Continuous batching (infer/batching.py + infer/slot_cache.py), in process.

The property that makes it correct: a request's tokens do not depend on which other requests
share its decode batch, when they join or leave, or where in the slot buffer its keys sit. So
every request decoded by the engine (slots < requests, rows joining and leaving, compaction
forced by a short slot) must give exactly the ids `infer.generate.generate` gives it alone.
"""
from __future__ import annotations

import threading
import time

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError, InputError
from ocellus.infer.batching import BatchEngine, Delta, Finish, QueueFull, Request, SamplingParams
from ocellus.infer.generate import generate
from ocellus.infer.slot_cache import SlotKVCache
from ocellus.nn.kv_cache import StaticKVCache


@pytest.fixture(scope="module")
def tokenizer():
    return ocellus.load_processor(ocellus.default_model_dir()).tokenizer


def random_decoder(vocab: int, heads: int, kv_heads: int, layers: int = 2, seed: int = 0, context: int = 128):
    from ocellus.hub.families import family_for_config
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "max_position_embeddings": context, "eos_token_id": None,
           "pad_token_id": 0, "tie_word_embeddings": False}
    torch.manual_seed(seed)
    return family_for_config(cfg).build(cfg).eval()


class Collect:
    """A request's sink: its events, and a flag once every choice finished."""

    def __init__(self, n: int = 1):
        self.events, self.n, self.done = [], n, threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if sum(isinstance(e, Finish) for e in self.events) == self.n or not isinstance(event, (Delta, Finish)):
            self.done.set()

    def finishes(self) -> list[Finish]:
        return sorted((e for e in self.events if isinstance(e, Finish)), key=lambda e: e.choice)

    def text(self, choice: int = 0) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta) and e.choice == choice)


PARAMS = [
    SamplingParams(max_tokens=9, temperature=0),
    SamplingParams(max_tokens=23, temperature=0, repetition_penalty=1.4),
    SamplingParams(max_tokens=15, temperature=0.9, top_k=20, seed=3),
    SamplingParams(max_tokens=30, temperature=1.2, top_p=0.8, seed=11),
    SamplingParams(max_tokens=5, temperature=0.7, min_p=0.1, seed=5),
    SamplingParams(max_tokens=17, temperature=0),
    SamplingParams(max_tokens=26, temperature=1.0, seed=0, repetition_penalty=1.2),
    SamplingParams(max_tokens=12, temperature=0),
]


def reference_ids(model, ids: torch.Tensor, p: SamplingParams) -> list[int]:
    out = generate(model, ids, max_new_tokens=p.max_tokens, do_sample=not p.greedy,
                   temperature=p.temperature if not p.greedy else 1.0, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                   repetition_penalty=p.repetition_penalty, seed=p.seed)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("heads,kv_heads,slots,max_len", [(4, 2, 3, 128), (4, 4, 4, 48)],
                         ids=["gqa-3slots", "mha-4slots-compacting"])
def test_batched_requests_equal_generate_alone(tokenizer, heads, kv_heads, slots, max_len):
    model = random_decoder(tokenizer.vocab_size, heads, kv_heads)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, tokenizer.vocab_size, (1, n), generator=g) for n in (3, 17, 8, 14, 5, 11, 2, 16)]
    engine = BatchEngine(model, tokenizer, slots=slots, max_len=max_len)
    realigns = []
    original = engine.cache._realign
    engine.cache._realign = lambda new_length: (realigns.append(new_length), original(new_length))[1]
    engine.start()
    sinks = []
    try:
        for ids, p in zip(prompts, PARAMS):
            sinks.append(Collect())
            engine.submit(Request(ids, p, sinks[-1]))
            time.sleep(0.002)  # arrive while others decode
        assert all(s.done.wait(60) for s in sinks)
    finally:
        engine.stop()
    for ids, p, sink in zip(prompts, PARAMS, sinks):
        (fin,) = sink.finishes()
        want = reference_ids(model, ids, p)
        assert list(fin.token_ids) == want, (ids.shape, p)
        assert fin.reason == "length" and fin.completion_tokens == p.max_tokens
        assert sink.text() == tokenizer.decode(want, skip_special_tokens=True)
    total = sum(p.max_tokens for p in PARAMS)
    assert engine.stats.steps < total - len(PARAMS)   # rows really were decoded together
    assert engine.stats.completed == len(PARAMS) and engine.cache.active == 0
    if max_len == 48:
        assert realigns, "a 48-token slot must have been compacted"


def test_slot_cache_moves_keep_each_rows_keys():
    """insert / remove / make_room move rows around; each row keeps exactly its own keys, in order."""
    torch.manual_seed(0)
    cache = SlotKVCache(num_layers=2, slots=3, num_kv_heads=2, max_len=16, head_dim=4)
    rows: dict[str, list[torch.Tensor]] = {}

    def prefilled(n, tag):
        c = StaticKVCache(2, 1, 2, n, 4)
        for layer in range(2):
            c.update(layer, torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4))
        c.advance(n)
        rows[tag] = [c.k[0][0].clone()]                                  # [H_kv, n, D]
        return c

    def decode(order, steps):
        for _ in range(steps):
            cache.make_room(1)
            k = torch.randn(len(order), 2, 1, 4)
            for layer in range(2):
                cache.update(layer, k, k)
            cache.advance(1)
            for i, tag in enumerate(order):
                rows[tag].append(k[i])

    cache.insert(prefilled(3, "a"))
    cache.insert(prefilled(7, "b"))  # longer than the shared length: every row shifts right first
    assert cache.length == 7 and cache.fill == [3, 7]
    decode(["a", "b"], 3)
    cache.insert(prefilled(2, "c"))
    assert cache.remove(1) == 2      # "b" leaves, "c" moves into its row
    assert cache.fill == [6, 2] and cache.length == 10
    decode(["a", "c"], 7)            # the shared length reaches 16: make_room compacts to the longest row
    assert cache.length == 13 and cache.fill == [13, 9]
    for i, tag in enumerate(["a", "c"]):
        got = cache.k[0][i, :, cache.length - cache.fill[i]:cache.length]
        assert torch.equal(got, torch.cat(rows[tag], dim=1)), tag
    mask = cache.attention_mask()
    assert mask.shape == (2, 14) and mask.sum(-1).tolist() == [14, 10] and mask[1, :4].sum() == 0
    with pytest.raises(InputError, match="no live row"):
        cache.remove(5)
    cache.remove(1)
    cache.remove(0)
    assert cache.active == 0 and cache.length == 0   # emptied: the next prompt is written from column 0


def test_slot_cache_insert_takes_the_row_asked_for():
    """insert(prefilled, row) copies that row of a batch-prefilled cache, not its first."""
    cache = SlotKVCache(num_layers=1, slots=2, num_kv_heads=1, max_len=8, head_dim=2)
    batch = StaticKVCache(1, 2, 1, 3, 2)
    k = torch.stack([torch.full((1, 3, 2), 1.0), torch.full((1, 3, 2), 2.0)])              # row r holds r + 1
    batch.update(0, k, -k)
    batch.advance(3)
    i = cache.insert(batch, row=1)
    assert (cache.k[0][i, :, :3] == 2).all() and (cache.v[0][i, :, :3] == -2).all()


def test_images_encoded_once_for_n_choices():
    d = ocellus.default_model_dir()
    model, proc = ocellus.load(d), ocellus.load_processor(d)
    from tests.serve.conftest import shape_image
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
                 images=[shape_image()])
    calls = []
    hook = model.multi_modal_projector.register_forward_hook(lambda *a: calls.append(1))
    engine = BatchEngine(model, proc.tokenizer, slots=4).start()
    sink = Collect(n=3)
    try:
        engine.submit(Request(batch["input_ids"], SamplingParams(max_tokens=10, temperature=1.0, seed=2), sink,
                              prefill={"pixel_values": batch["pixel_values"]}, n=3))
        assert sink.done.wait(60)
    finally:
        engine.stop()
        hook.remove()
    assert len(calls) == 1
    assert [f.choice for f in sink.finishes()] == [0, 1, 2]


def test_cancel_queue_full_and_timeout(tokenizer):
    model = random_decoder(tokenizer.vocab_size, 4, 2, context=512)
    engine = BatchEngine(model, tokenizer, slots=1, max_queue=1, max_len=512).start()
    try:
        ids = torch.tensor([[5, 6, 7]])
        long = Collect()
        first = Request(ids, SamplingParams(max_tokens=400, temperature=0), long)
        engine.submit(first)
        while engine.stats.running == 0:  # admitted: the queue is empty again
            time.sleep(0.001)
        queued = Request(ids, SamplingParams(max_tokens=4, temperature=0), Collect())
        engine.submit(queued)  # waits: the only slot is taken
        with pytest.raises(QueueFull, match="queue is full"):
            engine.submit(Request(ids, SamplingParams(max_tokens=4, temperature=0), Collect()))
        queued.cancel()
        first.cancel()
        deadline = time.time() + 30
        while (engine.stats.running or engine.stats.waiting) and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats.cancelled == 2 and engine.stats.running == 0
        assert not long.finishes()  # a cancelled request gets no more events
        slow = Collect()
        engine.submit(Request(ids, SamplingParams(max_tokens=400, temperature=0), slow,
                              deadline=time.monotonic() + 0.05))
        assert slow.done.wait(30)
        assert slow.finishes()[0].reason == "timeout" and engine.stats.timed_out == 1
        with pytest.raises(InputError, match="exceeds the context"):
            engine.submit(Request(ids, SamplingParams(max_tokens=510, temperature=0), Collect()))
    finally:
        engine.stop()


def _answered(engine: BatchEngine, ids: torch.Tensor, **params) -> Collect:
    """One greedy request run to its end on a started engine: its events."""
    sink = Collect()
    engine.submit(Request(ids, SamplingParams(temperature=0, **params), sink))
    assert sink.done.wait(30)
    return sink


def test_stop_strings_are_cut_and_held_back(tokenizer):
    model = random_decoder(tokenizer.vocab_size, 4, 2)
    ids = torch.tensor([[9, 10, 11, 12]])
    engine = BatchEngine(model, tokenizer, slots=2).start()
    try:
        text = _answered(engine, ids, max_tokens=30).text()
        stop = text[len(text) // 2:len(text) // 2 + 3]
        cut = _answered(engine, ids, max_tokens=30, stop=(stop,))
    finally:
        engine.stop()
    assert cut.text() == text[:text.index(stop)]
    assert cut.finishes()[0].reason == "stop"
    assert all(stop not in e.text for e in cut.events if isinstance(e, Delta))


def test_each_choice_draws_from_its_own_seed(tokenizer):
    """n choices of a seeded request: choice c samples as a lone request seeded seed + c (so they differ)."""
    model = random_decoder(tokenizer.vocab_size, 4, 2)
    ids = torch.tensor([[5, 6, 7]])
    engine = BatchEngine(model, tokenizer, slots=4).start()
    try:
        both, alone = Collect(n=2), Collect()
        engine.submit(Request(ids, SamplingParams(max_tokens=12, temperature=1.0, seed=4), both, n=2))
        engine.submit(Request(ids, SamplingParams(max_tokens=12, temperature=1.0, seed=5), alone))
        assert both.done.wait(30) and alone.done.wait(30)
    finally:
        engine.stop()
    first, second = both.finishes()
    assert second.token_ids == alone.finishes()[0].token_ids and first.token_ids != second.token_ids


def test_text_held_back_for_a_stop_string_is_released_at_eos(tokenizer):
    """The reply ends (eos) on text that could have begun a stop string: that text is sent, not dropped."""
    model = random_decoder(tokenizer.vocab_size, 4, 2)
    ids = torch.tensor([[9, 10, 11, 12]])
    engine = BatchEngine(model, tokenizer, slots=2).start()
    try:
        out = list(_answered(engine, ids, max_tokens=16).finishes()[0].token_ids)
        k = next(i for i in range(3, len(out)) if out[i] not in out[:i])   # a token first generated at step k
        text = tokenizer.decode(out[:k], skip_special_tokens=True)
        engine.eos = (out[k],)                                             # ... is now the end of the reply
        held = _answered(engine, ids, max_tokens=16, stop=(text[-1] + "\x00",))
    finally:
        engine.stop()
    assert held.finishes()[0].reason == "stop" and held.text() == text


def test_refuses_models_with_other_decode_state(tokenizer):
    class Extra(StaticKVCache):
        pass

    model = random_decoder(tokenizer.vocab_size, 4, 2)
    model.new_cache = lambda b, n: Extra(1, b, 2, n, 8)
    with pytest.raises(ConfigError, match="keeps its decode state in a Extra"):
        BatchEngine(model, tokenizer)
