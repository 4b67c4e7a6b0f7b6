"""One bad request hurts only itself (issue 20): a row whose logits are NaN, or whose sampling parameters
overflow float32, ends its own request with an error while the other rows of the same decode step finish
with exactly the text they get alone; out-of-range sampling values are a 400 naming the field."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

import ocellus
from ocellus.infer.batching import NON_FINITE_LOGITS, BatchEngine, Failure, Request, SamplingParams
from tests.serve.conftest import MODEL_ID, data_url, shape_image
from tests.serve.test_engine import Collect, random_decoder, reference_ids


@pytest.fixture(scope="module")
def tokenizer():
    return ocellus.load_processor(ocellus.default_model_dir()).tokenizer


def test_nan_logits_end_only_their_row(tokenizer):
    """slots=2: a good request (5-token prompt) and a bad one (30 tokens) decode together; from position 33
    on the bad row's logits are NaN (a forward hook). The bad request gets a 500 Failure, the good one
    finishes with generate()'s ids, and the poisoned step really held both rows."""
    model = random_decoder(tokenizer.vocab_size, 4, 2)
    g = torch.Generator().manual_seed(3)
    good_ids, bad_ids = (torch.randint(4, tokenizer.vocab_size, (1, n), generator=g) for n in (5, 30))
    poisoned_steps = []

    def poison(module, args, kwargs, output):
        pos = kwargs["position_ids"]
        if pos.shape[1] == 1 and (pos[:, 0] >= 33).any():
            output.logits[pos[:, 0] >= 33] = float("nan")
            poisoned_steps.append(pos.shape[0])
        return output
    hook = model.register_forward_hook(poison, with_kwargs=True)
    engine = BatchEngine(model, tokenizer, slots=2, max_len=64)
    good, bad, tiny_t = Collect(), Collect(), Collect()
    greedy = SamplingParams(max_tokens=20, temperature=0)
    try:
        engine.submit(Request(good_ids, greedy, good))
        engine.submit(Request(bad_ids, SamplingParams(max_tokens=20, temperature=0), bad))
        engine.start()
        assert good.done.wait(60) and bad.done.wait(60)
        # a temperature that overflows 1/T decodes greedily (vLLM's rule) instead of raising
        engine.submit(Request(good_ids, SamplingParams(max_tokens=20, temperature=1e-40), tiny_t))
        assert tiny_t.done.wait(60)
    finally:
        engine.stop()
        hook.remove()
    failures = [e for e in bad.events if isinstance(e, Failure)]
    assert failures == [Failure(500, NON_FINITE_LOGITS)] and not bad.finishes()
    assert poisoned_steps and poisoned_steps[0] == 2, poisoned_steps  # the NaN row shared its step
    want = reference_ids(model, good_ids, greedy)
    assert list(good.finishes()[0].token_ids) == want
    assert list(tiny_t.finishes()[0].token_ids) == want
    assert engine.stats.failed == 1 and engine.stats.completed == 2 and engine.cache.active == 0


def test_overflowing_sampling_fails_only_that_request(tokenizer):
    """repetition_penalty=1e-300 with sampling turns the probabilities into NaN: a 400 for that request, the
    request decoding beside it is untouched."""
    model = random_decoder(tokenizer.vocab_size, 4, 2)
    ids = torch.tensor([[9, 10, 11, 12, 9, 10]])
    engine = BatchEngine(model, tokenizer, slots=2, max_len=64)
    long, bad = Collect(), Collect()
    params = SamplingParams(max_tokens=30, temperature=0.8, seed=4)
    try:
        engine.start()
        engine.submit(Request(ids, params, long))
        engine.submit(Request(ids, SamplingParams(max_tokens=30, temperature=1.0, repetition_penalty=1e-300), bad))
        assert long.done.wait(60) and bad.done.wait(60)
    finally:
        engine.stop()
    (failure,) = [e for e in bad.events if isinstance(e, Failure)]
    assert failure.status == 400 and "repetition_penalty=1e-300" in failure.message
    assert list(long.finishes()[0].token_ids) == reference_ids(model, ids, params)


# -- through the server and the official client ----------------------------------------------------
def ask(client, **kw):
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(shape_image())}},
                                         {"type": "text", "text": "Describe the image in detail."}]}]
    r = client.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=24, **kw)
    return r.choices[0].message.content


def test_bad_sampling_request_beside_good_ones(client, server):
    alone = ask(client, temperature=0)
    with ThreadPoolExecutor(4) as pool:
        goods = [pool.submit(ask, client, temperature=0) for _ in range(2)]
        tiny = pool.submit(ask, client, temperature=3e-38)
        bad = pool.submit(ask, client, temperature=1.0, extra_body={"repetition_penalty": 1e-300})
        with pytest.raises(openai.BadRequestError) as e:
            bad.result()
        assert "repetition_penalty" in e.value.message
        assert [f.result() for f in goods] == [alone, alone]
        assert tiny.result() == alone
    assert server.health()["status"] == "ok"


OUT_OF_RANGE = [
    ("temperature", {"temperature": 2.5}), ("temperature", {"temperature": -0.1}), ("top_p", {"top_p": 1.5}),
    ("top_p", {"top_p": 0}), ("frequency_penalty", {"frequency_penalty": 3}),
    ("presence_penalty", {"presence_penalty": -2.5}), ("n", {"n": 0}), ("max_tokens", {"max_tokens": 0}),
    ("seed", {"seed": 2**63}), ("seed", {"seed": -2**63 - 1}),
    ("repetition_penalty", {"extra_body": {"repetition_penalty": 0}}),
    ("repetition_penalty", {"extra_body": {"repetition_penalty": -1.0}}),
    ("top_k", {"extra_body": {"top_k": -1}}), ("top_k", {"extra_body": {"top_k": 2**64}}),
    ("min_p", {"extra_body": {"min_p": 1.5}}), ("temperature", {"temperature": 10**400}),
]


@pytest.mark.parametrize("field,kw", OUT_OF_RANGE, ids=[f"{f}={list(k.values())[0]}"[:40] for f, k in OUT_OF_RANGE])
def test_out_of_range_sampling_is_400_naming_the_field(client, server, field, kw):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], **kw)
    assert e.value.status_code == 400 and e.value.body["param"] == field, e.value.body
    assert field in e.value.message
    assert server.health()["status"] == "ok"
