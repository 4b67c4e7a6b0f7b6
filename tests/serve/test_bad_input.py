"""The bad-input battery: each request is answered with a clear 4xx in OpenAI's error shape, and the
server is still healthy afterwards (a /health check after every case)."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import openai
import pytest
from PIL import Image

from tests.serve.conftest import MODEL_ID, TEST_LIMITS, data_url, post, shape_image

URL = "/v1/chat/completions"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data follows): the size check must refuse it
    from the header, before anything is decoded or allocated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def b64(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def chat(content, **extra) -> dict:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def image_msg(*urls: str, text: str = "What color is the shape?") -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": u}} for u in urls] + [{"type": "text", "text": text}]


SMALL = data_url(shape_image())

# (name, body or raw bytes, expected status, a phrase the message must contain)
CASES = [
    ("invalid JSON", b'{"model": "x", "messages": [', 400, "not valid JSON"),
    ("body is a list", [1, 2], 400, "must be a JSON object"),
    ("messages is a string", {"model": MODEL_ID, "messages": "hi"}, 400, "'messages' must be an array"),
    ("max_tokens is a string", chat("hi", max_tokens="10"), 400, "'max_tokens' must be an integer"),
    ("temperature is a string", chat("hi", temperature="hot"), 400, "'temperature' must be a number"),
    ("temperature out of range", chat("hi", temperature=3.5), 400, "'temperature' must be in"),
    ("top_p zero", chat("hi", top_p=0), 400, "'top_p' must be in"),
    ("stream not a bool", chat("hi", stream="yes"), 400, "'stream' must be a boolean"),
    ("content a number", {"model": MODEL_ID, "messages": [{"role": "user", "content": 5}]}, 400,
     "content must be a string or an array"),
    ("unknown role", {"model": MODEL_ID, "messages": [{"role": "robot", "content": "hi"}]}, 400, ".role must be"),
    ("unknown part type", chat([{"type": "input_audio", "input_audio": {}}]), 400, "unsupported content part"),
    ("unknown model", {**chat("hi"), "model": "gpt-17"}, 404, "does not exist"),
    ("missing model", {"messages": [{"role": "user", "content": "hi"}]}, 400, "'model' is required"),
    ("empty messages", {"model": MODEL_ID, "messages": []}, 400, "at least one message"),
    ("only an empty user message", chat("   "), 400, "nothing to answer"),
    ("corrupt base64", chat(image_msg("data:image/png;base64,@@@not-base64@@@")), 400, "not valid base64"),
    ("a non-image file", chat(image_msg(b64(b"just some text, not a picture\n" * 20))), 400, "not an image"),
    ("truncated png", chat(image_msg(b64(base64.b64decode(SMALL.split(",")[1])[:60]))), 400, "truncated or corrupt"),
    ("20000x20000 image", chat(image_msg(b64(png_header_only(20000, 20000)))), 400, "decompression bomb"),
    ("2000x2000 image over --max-image-pixels", chat(image_msg(b64(png_header_only(2000, 2000)))), 400,
     "over the limit max_pixels=1,048,576"),
    ("100 images", chat(image_msg(*[SMALL] * 100)), 400, "too many images"),
    ("text/plain data URL", chat(image_msg("data:text/plain;base64,aGVsbG8=")), 400, "data URLs must be base64 images"),
    ("http URL while disabled", chat(image_msg("http://127.0.0.1:1/x.png")), 400, "http(s) image URLs are disabled"),
    ("ftp URL", chat(image_msg("ftp://example.com/x.png")), 400, "unsupported image URL scheme"),
    ("file URL outside the allowed dir", chat(image_msg("file:///etc/passwd")), 400, "outside the allowed image dir"),
    ("image in an assistant message", {"model": MODEL_ID, "messages": [
        {"role": "assistant", "content": image_msg(SMALL)}, {"role": "user", "content": "hi"}]}, 400,
     "only accepted in user messages"),
    ("literal image token in text", chat("look: <image> what is it?"), 400, "image token"),
    ("over-long prompt", chat("red " * 400), 400, "maximum context length"),
    ("max_tokens over the server limit", chat("hi", max_tokens=TEST_LIMITS["max_tokens"] + 1), 400,
     "over this server's limit"),
    ("prompt + max_tokens past the context", chat("red " * 100, max_tokens=TEST_LIMITS["max_tokens"]), 400,
     "maximum context length"),
    ("negative max_tokens", chat("hi", max_tokens=-5), 400, "'max_tokens' must be >= 1"),
    ("zero max_tokens", chat("hi", max_tokens=0), 400, "'max_tokens' must be >= 1"),
    ("boolean max_tokens", chat("hi", max_tokens=True), 400, "'max_tokens' must be an integer, got bool"),
    ("zero max_completion_tokens", chat("hi", max_tokens=None, max_completion_tokens=0), 400,
     "'max_completion_tokens' must be >= 1"),
    ("max_completion_tokens over the server limit",
     chat("hi", max_tokens=None, max_completion_tokens=TEST_LIMITS["max_tokens"] + 1), 400,
     "'max_completion_tokens' is"),
    ("n too large", chat("hi", n=50), 400, "'n' must be between 1"),
    ("too many stop strings", chat("hi", stop=["a", "b", "c", "d", "e"]), 400, "'stop' must be"),
    ("unknown argument", chat("hi", best_of=3), 400, "Unrecognized request argument supplied: best_of"),
    ("beam search (no streamed beams: refused, not ignored)", chat("hi", num_beams=3), 400,
     "Unrecognized request argument supplied: num_beams"),
    ("tools (not implemented)", chat("hi", tools=[{"type": "function"}]), 400, "'tools' is not implemented"),
    ("logprobs (not implemented)", chat("hi", logprobs=True), 400, "logprobs are not implemented"),
    ("presence_penalty (not implemented)", chat("hi", presence_penalty=0.5), 400, "use repetition_penalty"),
    ("stream_options without stream", chat("hi", stream_options={"include_usage": True}), 400,
     "only allowed with stream=true"),
]


@pytest.mark.parametrize("name,body,status,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_clear_4xx(server, name, body, status, phrase):
    raw = body if isinstance(body, bytes) else None
    got, answer = post(server.url + URL, None if raw else body, raw=raw)
    assert got == status, answer
    err = answer["error"]
    assert phrase in err["message"], err
    assert set(err) == {"message", "type", "param", "code"}
    assert server.health()["status"] == "ok"


def test_request_over_the_byte_limit_is_413(server):
    big = chat(image_msg(b64(b"\0" * (TEST_LIMITS["max_request_bytes"] + 10))))
    got, answer = post(server.url + URL, big)
    assert got == 413 and "over this server's limit" in answer["error"]["message"]
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_missing_or_wrong_key_is_401(server, key):
    got, answer = post(server.url + URL, chat("hi"), key=key)
    assert got == 401 and answer["error"]["type"] == "authentication_error"
    assert server.health()["status"] == "ok"


def test_wrong_method_and_path(server):
    assert post(server.url + URL, None, method="GET")[0] == 405
    got, answer = post(server.url + "/v1/embeddings", chat("hi"))
    assert got == 404 and answer["error"]["code"] == "not_found"
    assert server.health()["status"] == "ok"


def test_openai_client_raises_typed_errors(client, server):
    """The official client turns the error bodies into its own exception types."""
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "does not exist" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=-1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:  # the error arrives before any chunk: a plain 400
        client.chat.completions.create(model=MODEL_ID, stream=True, messages=[
            {"role": "user", "content": image_msg("data:image/png;base64,AAAA")}])
    assert server.health()["status"] == "ok"


def test_still_answers_after_the_battery(client):
    img = Image.new("RGB", (48, 48), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    r = client.chat.completions.create(model=MODEL_ID, max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": image_msg(b64(buf.getvalue()))}])
    assert r.usage.completion_tokens >= 1
