"""Serving limits at their edges, through the ASGI app in process on the embedded tiny LLaVA (small limits the
shared test server does not set): the default max_tokens capped by the server's --max-tokens, a full queue
answered 429 (a client retries later; 503 would say the server is down), the prompt-size guard counting UTF-8
bytes (not characters), and the body cap over the whole of a chunked body (not each chunk)."""
from __future__ import annotations

import asyncio
import json

import pytest

import ocellus
from ocellus.serve.app import create_app
from ocellus.serve.json_body import read_json
from ocellus.serve.limits import ServeLimits
from ocellus.serve.openai_schema import APIError
from tests.serve.conftest import MODEL_ID
from tests.serve.test_template_stops import _post

HEADERS = {"host": "127.0.0.1:8000", "content-type": "application/json"}


@pytest.fixture(scope="module")
def llava():
    d = ocellus.default_model_dir()
    return ocellus.load(d), ocellus.load_processor(d)


def _body(**extra) -> dict:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": "What is in the picture?"}], **extra}


def test_default_max_tokens_is_capped_by_the_server_limit(llava):
    """No max_tokens in the request: the reply may run to what is left of the context, but never past --max-tokens."""
    app = create_app(*llava, model_id=MODEL_ID, limits=ServeLimits(max_tokens=5))
    app.state.serve.engine.start()
    try:
        out = json.loads(asyncio.run(_post(app, _body(temperature=0, ignore_eos=True))))
    finally:
        app.state.serve.engine.stop()
    assert app.state.serve.engine.max_len > 5 + out["usage"]["prompt_tokens"]   # the context alone would allow more
    assert out["usage"]["completion_tokens"] == 5 and out["choices"][0]["finish_reason"] == "length"


def test_a_full_queue_is_answered_429(llava):
    """max_queue 1 and an engine not yet running: the first request waits in the queue, the second is told to
    retry (429, code queue_full), and the first is still waiting."""
    app = create_app(*llava, model_id=MODEL_ID, limits=ServeLimits(max_queue=1, slots=1))
    engine = app.state.serve.engine

    async def two():
        first = asyncio.create_task(_post(app, _body(max_tokens=2)))
        for _ in range(500):                   # until the first is queued
            await asyncio.sleep(0.01)
            if engine.stats.waiting == 1:
                break
        second = json.loads(await _post(app, _body(max_tokens=2)))
        done = first.done()
        first.cancel()
        return second, done
    second, first_done = asyncio.run(two())
    assert not first_done
    assert second["error"]["code"] == "queue_full" and second["error"]["type"] == "rate_limit_error", second


def test_prompt_size_counts_utf8_bytes(llava):
    """The guard before tokenizing is on bytes: n two-byte characters pass when 2n bytes fit and are refused
    when only n would (a character count lets twice the text through)."""
    app = create_app(*llava, model_id=MODEL_ID, limits=ServeLimits(prompt_bytes_per_token=1))
    state = app.state.serve
    cap = state.max_prompt_bytes
    state.check_prompt_size(["a" * cap], "messages")            # ASCII at the cap: through
    state.check_prompt_size(["é" * (cap // 2)], "messages")      # 2 bytes each, at the cap: through
    with pytest.raises(APIError) as e:
        state.check_prompt_size(["é" * (cap // 2 + 1)], "messages")
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    with pytest.raises(APIError):                                 # summed over the messages' texts
        state.check_prompt_size(["a" * (cap - 1), "é"], "messages")


class _Chunked:
    """A request whose body arrives in pieces with no content-length (chunked transfer)."""

    def __init__(self, pieces: list[bytes]):
        self.headers, self.pieces = {}, pieces

    async def stream(self):
        for piece in self.pieces:
            yield piece


def test_the_body_cap_counts_the_whole_chunked_body():
    """Ten 100-byte pieces against a 500-byte cap: 413 though no piece is over it; under the cap the JSON is read."""
    value = json.dumps({"text": "x" * 988}).encode()
    assert len(value) == 1000
    with pytest.raises(APIError) as e:
        asyncio.run(read_json(_Chunked([value[i:i + 100] for i in range(0, 1000, 100)]), limit=500))
    assert e.value.status == 413 and e.value.code == "request_too_large"
    assert asyncio.run(read_json(_Chunked([value[i:i + 100] for i in range(0, 1000, 100)]), limit=1000)) == \
        {"text": "x" * 988}
