"""A request body -> JSON values the handlers can trust, or a 4xx naming the field (never a 500).

Valid JSON that Python's decoder turns into trouble is refused here, at parse time:
- nesting deeper than MAX_DEPTH levels (the C decoder raises RecursionError around 1000 levels; a
  request needs a handful, so 64 is plenty and the walk below never recurses);
- integers longer than MAX_INT_DIGITS digits (Python refuses to convert 4300+ digits with a
  ValueError, and int() of long digit strings is quadratic; no field takes more than an int64);
- NaN / Infinity (not JSON, though Python's decoder accepts them);
- lone UTF-16 surrogates ("\\ud800"): a str that cannot be encoded to UTF-8, so the tokenizer,
  or an error message echoing it, would fail later;
- more than MAX_VALUES values (every value costs tens of bytes of Python objects).
"""
from __future__ import annotations

import json
import re

from starlette.requests import Request

from ocellus.serve.openai_schema import APIError, bad

MAX_DEPTH = 64
MAX_INT_DIGITS = 40
MAX_VALUES = 100_000
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:]')
DRAIN_BYTES = 64 * 2**20   # an over-limit body is read and dropped up to this much before the 413 is sent


async def read_json(request: Request, limit: int):
    """The body, read under the byte cap (413 past it), then parse_json."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        # Read (and drop) the body before answering, up to a bound: a client still sending when the server
        # answers and closes gets a broken pipe instead of the 413 (a lingering close, as nginx does).
        drained = 0
        async for piece in request.stream():
            drained += len(piece)
            if drained > DRAIN_BYTES:
                break
        raise APIError(413, f"the request body is {int(declared):,} bytes, over this server's limit of "
                            f"{limit:,} (--max-request-bytes)", code="request_too_large")
    body = bytearray()
    async for piece in request.stream():  # counted as it arrives: a chunked body has no content-length
        body += piece
        if len(body) > limit:
            raise APIError(413, f"the request body is over this server's limit of {limit:,} bytes "
                                f"(--max-request-bytes)", code="request_too_large")
    return parse_json(bytes(body))


class _Refused:
    """A JSON value the decoder must not turn into a Python one; the walk names where it was."""

    def __init__(self, what: str):
        self.what = what


def _int(digits: str):
    n = len(digits.lstrip("-"))
    return _Refused(f"an integer of {n:,} digits (at most {MAX_INT_DIGITS})") if n > MAX_INT_DIGITS else int(digits)


def _constant(name: str):
    return _Refused(f"{name}, which is not JSON")


def parse_json(body: bytes):
    """The body's JSON value; APIError 400 (invalid_json / invalid_value) naming the field otherwise."""
    try:
        value = json.loads(body, parse_int=_int, parse_constant=_constant)
    except RecursionError:
        field = _deep_field(body)
        raise bad(f"{_name(field)} is nested deeper than {MAX_DEPTH} levels", field, "nested_too_deep") from None
    except ValueError as e:  # JSONDecodeError, and bytes that are not UTF-8/16/32 (UnicodeDecodeError)
        raise bad(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    _walk(value)
    return value


def _name(path: str | None) -> str:
    return f"'{path}'" if path else "the request body"


def _walk(value) -> None:
    """Depth, refused values, lone surrogates and the value count, without recursion."""
    stack, seen = [(value, None, 0)], 0
    while stack:
        v, path, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise bad(f"the request body holds more than {MAX_VALUES:,} JSON values", None, "too_many_values")
        if depth > MAX_DEPTH:
            raise bad(f"{_name(path)} is nested deeper than {MAX_DEPTH} levels", path, "nested_too_deep")
        if isinstance(v, _Refused):
            raise bad(f"{_name(path)} is {v.what}", path, "invalid_value")
        if isinstance(v, str) and _SURROGATE.search(v):
            raise bad(f"{_name(path)} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not a character",
                      path, "invalid_value")
        if isinstance(v, dict):
            for k, item in v.items():
                where = k if path is None else f"{path}.{k}"
                if _SURROGATE.search(k):
                    raise bad(f"a key in {_name(path)} holds a lone UTF-16 surrogate", path, "invalid_value")
                stack.append((item, where, depth + 1))
        elif isinstance(v, list):
            stack.extend((item, f"{path or ''}[{i}]", depth + 1) for i, item in enumerate(v))


def _deep_field(body: bytes) -> str | None:
    """The top-level field that nests too deep, found by a light scan of the raw bytes (the decoder
    gave up before building anything)."""
    depth, key, last = 0, None, None
    for m in _TOKENS.finditer(body):
        token = m.group()
        if token in (b"{", b"["):
            depth += 1
            if depth > MAX_DEPTH:
                return key
        elif token in (b"}", b"]"):
            depth -= 1
        elif token == b":":
            if depth == 1:
                key = last
        else:
            last = token[1:-1].decode("utf-8", "replace")
    return key
