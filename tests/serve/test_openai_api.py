"""The official `openai` client against a running `ocellus serve` (the embedded tiny LLaVA) on loopback.

Answers are checked against the library itself: the same messages and images through
`ocellus.load_processor` + `generate` in this process must give the text the server returned.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

import ocellus
from ocellus.infer.generate import generate
from tests.serve.conftest import API_KEY, MODEL_ID, data_url, shape_image


@pytest.fixture(scope="module")
def local():
    d = ocellus.default_model_dir()
    return ocellus.load(d), ocellus.load_processor(d)


def reference(local, question: str, images=(), max_tokens: int = 16, **kw) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) from the library, no server."""
    model, proc = local
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    batch = proc(messages=[{"role": "user", "content": content}], images=list(images) or None)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    out = generate(model, batch["input_ids"], max_new_tokens=max_tokens, **extra, **kw)[0, batch["input_ids"].shape[1]:]
    return proc.decode(out.tolist(), skip_special_tokens=True), batch["input_ids"].shape[1], len(out)


def user(question: str, *urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": parts + [{"type": "text", "text": question}]}]


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_image_chat_matches_the_library(client, local, fmt):
    img = shape_image((30, 40, 220))
    r = client.chat.completions.create(model=MODEL_ID, messages=user("What color is the shape?", data_url(img, fmt)),
                                       max_tokens=16, temperature=0)
    # the server decodes the same bytes the reference does
    from ocellus.data.image import load_image
    text, prompt_tokens, completion_tokens = reference(local, "What color is the shape?",
                                                       [load_image(data_url(img, fmt))], max_tokens=16)
    assert r.choices[0].message.content == text and text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("stop" if completion_tokens < 16 else "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert r.usage.total_tokens == prompt_tokens + completion_tokens


def test_streaming_chunks_in_openai_order(client, local):
    img = shape_image((30, 200, 30))
    stream = client.chat.completions.create(model=MODEL_ID, messages=user("Describe the image in detail.", data_url(img)),
                                            max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finals) == 1 and chunks.index(finals[0]) == len(chunks) - 2  # finish, then the usage chunk
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ref, prompt_tokens, completion_tokens = reference(local, "Describe the image in detail.", [img], max_tokens=24)
    assert text == ref
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert len({c.id for c in chunks}) == 1


def test_text_only_and_system_message(client):
    r = client.chat.completions.create(model=MODEL_ID, max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hello"}])
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1


def test_sampling_seed_reproducible_and_n_choices(client, local):
    msgs = user("Describe the image in detail.", data_url(shape_image((200, 200, 30))))
    kw = dict(model=MODEL_ID, messages=msgs, max_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    # a seeded request draws exactly what generate(seed=...) draws
    ref, _, _ = reference(local, "Describe the image in detail.", [shape_image((200, 200, 30))], max_tokens=20,
                          do_sample=True, temperature=1.0, top_p=0.95, seed=7)
    assert a.choices[0].message.content == ref
    three = client.chat.completions.create(**{**kw, "n": 3, "temperature": 1.5})
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.usage.completion_tokens >= 3


def test_extension_params_and_stop(client, local):
    msgs = user("Describe the image in detail.", data_url(shape_image()))
    full = client.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=24, temperature=0,
                                          extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3})
    ref, _, _ = reference(local, "Describe the image in detail.", [shape_image()], max_tokens=24,
                          repetition_penalty=1.3)
    assert full.choices[0].message.content == ref
    # the tiny model answers in a word or two: hot sampling with a seed gives a longer, reproducible text
    kw = dict(model=MODEL_ID, messages=msgs, max_tokens=24, temperature=2.0)
    text, seed = "", 0
    while len(text) < 6:
        seed += 1
        text = client.chat.completions.create(**kw, seed=seed).choices[0].message.content
    stop = text[3:5]
    cut = client.chat.completions.create(**kw, seed=seed, stop=[stop, "never-generated"])
    assert cut.choices[0].message.content == text[:text.index(stop)]  # the stop string itself is left out
    assert cut.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(**kw, seed=seed, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[:text.index(stop)]


def test_max_tokens_gives_length(client):
    r = client.chat.completions.create(model=MODEL_ID, messages=user("Describe the image in detail.", data_url(shape_image())),
                                       max_tokens=1, temperature=0)
    assert r.usage.completion_tokens == 1 and r.choices[0].finish_reason in ("length", "stop")


def test_file_url_under_the_allowed_dir(client, image_dir, local):
    r = client.chat.completions.create(model=MODEL_ID, max_tokens=12, temperature=0,
                                       messages=user("What color is the shape?", (image_dir / "red.png").as_uri()))
    ref, _, _ = reference(local, "What color is the shape?", [str(image_dir / "red.png")], max_tokens=12)
    assert r.choices[0].message.content == ref


def test_api_key_required(server):
    from openai import OpenAI
    for key in ("wrong-key", ""):
        bad = OpenAI(base_url=server.url + "/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.status_code == 401 and "API key" in e.value.message
    assert server.health()["status"] == "ok"  # /health needs no key
    # the key alone, without the Bearer scheme, is not the header OpenAI clients send: refused
    req = urllib.request.Request(server.url + "/v1/models", headers={"Authorization": API_KEY})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 401


def test_client_disconnect_cancels_the_request(server):
    """Read two chunks of a long stream, close the connection: the engine frees the slot early."""
    before = server.health()["engine"]
    body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "Describe the image in detail."}],
                       "max_tokens": 200, "ignore_eos": True, "stream": True}).encode()
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    resp = urllib.request.urlopen(req, timeout=30)
    assert resp.readline().startswith(b"data: ")   # the role chunk
    resp.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        now = server.health()["engine"]
        if now["cancelled"] > before["cancelled"] and now["running"] == 0:
            break
        time.sleep(0.05)
    assert now["cancelled"] == before["cancelled"] + 1, now
    assert now["running"] == 0
    assert now["generated_tokens"] - before["generated_tokens"] < 200


def test_concurrent_clients_all_answered(client, local):
    """Several requests at once share the decode batch; each still gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor
    colors = [(220, 30, 30), (30, 200, 30), (30, 40, 220), (120, 30, 160)]

    def ask(color):
        r = client.chat.completions.create(model=MODEL_ID, max_tokens=16, temperature=0,
                                           messages=user("Describe the image in detail.", data_url(shape_image(color))))
        return r.choices[0].message.content

    with ThreadPoolExecutor(len(colors)) as pool:
        got = list(pool.map(ask, colors))
    want = [reference(local, "Describe the image in detail.", [shape_image(c)], max_tokens=16)[0] for c in colors]
    assert got == want


def test_explain_returns_answer_and_heat_map(server, local):
    import base64
    import io

    from PIL import Image

    from ocellus.viz.attention_map import answer_attention
    from tests.serve.conftest import post
    img = shape_image((30, 200, 30))
    status, body = post(server.url + "/v1/ocellus/explain",
                        {"image": data_url(img), "question": "Where is the shape?", "max_tokens": 8})
    assert status == 200, body
    want = answer_attention(*local, img, "Where is the shape?", max_new_tokens=8)
    assert body["answer"] == want.answer and tuple(body["peak"]) == want.peak
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap"].split(",", 1)[1])))
    assert heat.size == img.size
    status, body = post(server.url + "/v1/ocellus/explain", {"image": data_url(img)})
    assert status == 400 and "question" in body["error"]["message"]


def test_api_key_from_the_environment(monkeypatch):
    from ocellus.serve.limits import API_KEY_ENV, ServeLimits
    monkeypatch.setenv(API_KEY_ENV, "sk-env")
    assert ServeLimits.key_from_env(None) == "sk-env"
    assert ServeLimits.key_from_env("sk-flag") == "sk-flag"   # the flag wins
    monkeypatch.delenv(API_KEY_ENV)
    assert ServeLimits.key_from_env(None) is None
