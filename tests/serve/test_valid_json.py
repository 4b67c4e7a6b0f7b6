"""Valid JSON never answers 500 (issue 20): huge integers, deep nesting, NaN, lone surrogates, wrong types in
any field, and every image /v1/ocellus/explain refuses each get an OpenAI-shaped 4xx naming the field."""
from __future__ import annotations

import base64

import openai
import pytest

from ocellus.serve.json_body import MAX_DEPTH, parse_json
from ocellus.serve.openai_schema import APIError
from tests.serve.conftest import MODEL_ID, data_url, post, shape_image
from tests.serve.test_bad_input import b64, png_header_only

URL = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def raw(body: str) -> bytes:
    return body.encode()


def chat_with(field_json: str) -> bytes:
    """A valid request with one more top-level field, written as raw JSON text."""
    return raw(f'{{"model": "{MODEL_ID}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2, '
               f'{field_json}}}')


# (name, raw body, the param the error must name)
RAW_CASES = [
    ("seed beyond int64", chat_with('"seed": 99999999999999999999'), "seed"),
    ("5000-digit seed", chat_with('"seed": ' + "9" * 5000), "seed"),
    ("5000-digit integer in metadata", chat_with('"metadata": {"a": [1, ' + "7" * 5000 + "]}"), "metadata.a[1]"),
    ("5000-digit negative max_tokens", chat_with('"max_tokens": -' + "1" * 5000).replace(b'"max_tokens": 2, ', b""),
     "max_tokens"),
    ("nested 100k deep", chat_with('"metadata": ' + "[" * 100_000 + "]" * 100_000), "metadata"),
    ("nested 100k deep objects", chat_with('"metadata": ' + '{"a":' * 100_000 + "1" + "}" * 100_000), "metadata"),
    ("nested 200 deep", chat_with('"metadata": ' + "[" * 200 + "]" * 200), "metadata" + "[0]" * MAX_DEPTH),
    ("NaN temperature", chat_with('"temperature": NaN'), "temperature"),
    ("Infinity top_p", chat_with('"top_p": -Infinity'), "top_p"),
    ("lone surrogate in content", raw(f'{{"model": "{MODEL_ID}", "messages": [{{"role": "user", '
                                      f'"content": "hi \\ud800 there"}}]}}'), "messages[0].content"),
    ("lone surrogate in the model", raw('{"model": "\\udfff", "messages": []}'), "model"),
    ("lone surrogate in a key", chat_with('"metadata": {"\\ud800": 1}'), "metadata"),
    ("role is a list", raw(f'{{"model": "{MODEL_ID}", "messages": [{{"role": ["user"], "content": "hi"}}]}}'),
     "messages[0].role"),
]


@pytest.mark.parametrize("name,body,param", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_valid_json_gets_a_4xx_naming_the_field(server, name, body, param):
    status, answer = post(server.url + URL, None, raw=body)
    assert 400 <= status < 500, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["param"] == param, answer
    assert server.health()["status"] == "ok"


def test_through_the_openai_client(client, server):
    """What the official client can send (it cannot encode a lone surrogate: those cases go raw above)."""
    cases = [("seed", dict(seed=2**70)), ("seed", dict(seed=-2**64)), ("temperature", dict(temperature=10**300)),
             ("metadata", dict(metadata={"k": 10**100}))]
    for param, kw in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**{"model": MODEL_ID, "messages": HI, "max_tokens": 2, **kw})
        assert e.value.body["param"].startswith(param), e.value.body
    assert server.health()["status"] == "ok"


WRONG = [None, True, -1, 0.5, 10**30, "x", "", [], {}, [[]], {"a": [1]}, [{"type": "text"}]]
PATHS = ["model", "messages", "messages.0", "messages.0.role", "messages.0.content", "messages.0.content.0",
         "messages.0.content.0.type", "messages.0.content.0.text", "messages.0.content.1.image_url",
         "messages.0.content.1.image_url.url", "messages.0.content.1.image_url.detail", "max_tokens", "temperature",
         "top_p", "n", "stop", "seed", "stream", "stream_options", "user", "metadata", "logprobs", "top_k", "min_p",
         "repetition_penalty", "ignore_eos", "frequency_penalty", "tools", "max_completion_tokens"]


def _with(path: str, value):
    body = {"model": MODEL_ID, "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": data_url(shape_image())}}]}]}
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return body


def test_any_wrong_type_anywhere_is_never_a_500(server):
    """Every field of a valid request replaced by values of every JSON type: a 4xx or an answer, never a 5xx."""
    for path in PATHS:
        for value in WRONG:
            if path == "stream" and value is True:
                continue  # an answer as server-sent events, not JSON: streaming has its own tests
            status, answer = post(server.url + URL, _with(path, value))
            assert status < 500, (path, value, answer)
            if status >= 400:
                assert set(answer["error"]) == {"message", "type", "param", "code"}, (path, value)
    assert server.health()["status"] == "ok"


EXPLAIN_IMAGES = [
    ("missing", None), ("a number", 5), ("corrupt base64", "data:image/png;base64,@@@"),
    ("not an image", b64(b"plain text, not a picture\n" * 10)), ("svg", "data:image/svg+xml;base64,PHN2Zz4="),
    ("truncated", b64(base64.b64decode(data_url(shape_image()).split(",")[1])[:60])),
    ("bomb header", b64(png_header_only(20000, 20000))), ("over --max-image-pixels", b64(png_header_only(2000, 2000))),
    ("http disabled", "http://127.0.0.1:1/x.png"), ("ftp", "ftp://example.com/x.png"),
    ("file outside the dir", "file:///etc/passwd"), ("no scheme, 100 KB", "A" * 100_000),
]


@pytest.mark.parametrize("name,image", EXPLAIN_IMAGES, ids=[c[0] for c in EXPLAIN_IMAGES])
def test_explain_refuses_bad_images_with_400(server, name, image):
    status, answer = post(server.url + "/v1/ocellus/explain", {"image": image, "question": "Where is it?"})
    assert status == 400, answer
    assert answer["error"]["param"] == "image" and len(answer["error"]["message"]) < 1000, answer
    assert server.health()["status"] == "ok"


def test_parse_json_rules():
    assert parse_json(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    for body, param in [(b'{"a": 1e400, "b": NaN}', "b"), (b'[0, "\\ud83d"]', "[1]"), (b"[" * 70 + b"]" * 70, None)]:
        with pytest.raises(APIError) as e:
            parse_json(body)
        assert e.value.status == 400 and (param is None or e.value.param == param), e.value.body()
    with pytest.raises(APIError, match="more than 100,000 JSON values"):
        parse_json(b"[" + b"0," * 100_000 + b"0]")
    assert parse_json('"\U0001f600 ok"'.encode()) == "\U0001f600 ok"   # a real astral character is fine
    assert parse_json(b'"\\ud83d\\ude00"') == "\U0001f600"                # and so is an escaped surrogate pair


def test_nesting_limit_is_exact():
    """MAX_DEPTH levels below the top value are accepted, one more is refused."""
    deepest = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)          # the innermost list at depth MAX_DEPTH
    assert parse_json(deepest) is not None
    with pytest.raises(APIError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_json(b"[" + deepest + b"]")
