"""The server ends replies at the processor's stop strings (a template that ends turns in plain text: MiniGPT-4's
"###") and at the request's `stop`, both together, streamed or not; a request's stop strings never cut the
replies of requests decoding in the same batch. The app runs in process on the embedded tiny LLaVA (its
processor given a stop string taken from the middle of its own reply)."""
from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import replace

import pytest

import ocellus
from ocellus.infer.batching import BatchEngine, Request, SamplingParams
from ocellus.serve.app import create_app
from tests.serve.conftest import MODEL_ID
from tests.serve.test_engine import Collect

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def llava():
    d = ocellus.default_model_dir()
    return ocellus.load(d), ocellus.load_processor(d)


async def _post(app, body: dict) -> bytes:
    """One POST /v1/chat/completions through the ASGI app in process: -> the response body."""
    raw = json.dumps(body).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]}
    messages, chunks = [{"type": "http.request", "body": raw, "more_body": False}], []

    async def receive():
        return messages.pop() if messages else await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
    await app(scope, receive, send)
    return b"".join(chunks)


def _reply(app, stream: bool = False, **extra) -> str:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24,
            "temperature": 0, "ignore_eos": True, "stream": stream, **extra}    # ignore_eos: a reply long enough
    out = asyncio.run(_post(app, body)).decode()
    if not stream:
        return json.loads(out)["choices"][0]["message"]["content"]
    events = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def _app(model, processor):
    app = create_app(model, processor, model_id=MODEL_ID)
    app.state.serve.engine.start()
    return app


def test_served_replies_end_at_the_processors_and_the_requests_stop_strings(llava):
    model, proc = llava
    plain = _app(model, proc)
    try:
        full = _reply(plain)
    finally:
        plain.state.serve.engine.stop()
    assert len(full) > 8, full
    stop = full[len(full) // 2:len(full) // 2 + 2]
    minigpt4 = copy.copy(proc)
    minigpt4.stop_strings = (stop,)
    app = _app(model, minigpt4)
    try:
        want = full[:full.index(stop)]
        assert _reply(app) == want
        assert _reply(app, stream=True) == want
        early = full[2:4]               # the request's own stop string, before the template's
        assert _reply(app, stop=[early]) == full[:full.index(early)]
        assert _reply(app, stream=True, stop=early) == full[:full.index(early)]
    finally:
        app.state.serve.engine.stop()


def test_a_requests_stop_strings_leave_its_batch_neighbours_alone(llava):
    model, proc = llava
    ids = proc(messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}])["input_ids"]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    alone = BatchEngine(model, proc.tokenizer, slots=2).start()
    try:
        full = Collect()
        alone.submit(Request(ids, params, full))
        assert full.done.wait(60)
    finally:
        alone.stop()
    text = full.text()
    assert len(text) > 8, text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    engine = BatchEngine(model, proc.tokenizer, slots=3)
    cut, plain, held = Collect(), Collect(), Collect()
    engine.submit(Request(ids, replace(params, stop=(stop,)), cut))   # all wait before the engine starts,
    engine.submit(Request(ids, params, plain))                        # so they decode in one batch
    engine.submit(Request(ids, replace(params, stop=(text[-1] + "\x00",)), held))   # its end could begin a stop
    engine.start()
    try:
        assert cut.done.wait(60) and plain.done.wait(60) and held.done.wait(60)
    finally:
        engine.stop()
    assert cut.text() == text[:text.index(stop)] and cut.finishes()[0].reason == "stop"
    assert plain.text() == text and plain.finishes()[0] == full.finishes()[0]
    assert held.text() == text                                        # the held-back last character, flushed
    assert engine.stats.steps < engine.stats.generated_tokens          # rows shared decode steps
