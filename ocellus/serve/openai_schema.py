"""OpenAI chat-completions shapes: request validation, response and stream-chunk bodies, errors.

Follows the public API reference (platform.openai.com/docs/api-reference/chat) closely enough
that the official `openai` client works unchanged: an unknown argument is refused ("Unrecognized
request argument supplied: ..."), a wrong model is 404 `model_not_found`, an over-long prompt is
400 `context_length_exceeded`, and every error is `{"error": {"message", "type", "param", "code"}}`.
Options OpenAI has and we do not implement (tools, logprobs, response_format, frequency/presence
penalties, ...) are refused with a 400 that says so rather than ignored. Extensions, sent through
the client's `extra_body`: top_k, min_p, repetition_penalty, ignore_eos (as vLLM's: decode to max_tokens).
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from ocellus.infer.batching import SamplingParams
from ocellus.serve.limits import ServeLimits

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SUPPORTED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
             "repetition_penalty", "ignore_eos", "stop", "seed", "n", "stream", "stream_options", "user", "metadata", "store",
             "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs"}
NOT_IMPLEMENTED = {"tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias", "audio",
                   "modalities", "prediction", "reasoning_effort", "parallel_tool_calls", "web_search_options",
                   "service_tier"}
MAX_STOP = 4
INT64 = (-2**63, 2**63 - 1)   # OpenAI's seed is an int64; other integer fields are bounded the same way


class APIError(Exception):
    """An error the server answers in OpenAI's shape."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
             415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
             504: "timeout_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


@dataclass(frozen=True)
class ImagePart:
    url: str
    where: str   # "messages[1].content[0]", for error messages


@dataclass(frozen=True)
class VideoPart:
    """A {"type": "video_url", "video_url": {"url": ...}} part (vLLM's form of a video in a chat message)."""
    url: str
    where: str


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[dict, ...]   # {"role", "content": [{"type": "text", "text"} | ImagePart | VideoPart]}
    params: SamplingParams       # max_tokens here is a placeholder when max_tokens_given is False
    max_tokens_given: bool
    n: int
    stream: bool
    include_usage: bool

    @property
    def images(self) -> list[ImagePart]:
        return [p for m in self.messages for p in m["content"] if isinstance(p, ImagePart)]

    @property
    def videos(self) -> list[VideoPart]:
        return [p for m in self.messages for p in m["content"] if isinstance(p, VideoPart)]


# -- field checks -------------------------------------------------------------------------------
def int_field(body: dict, name: str, lo: int | None = None, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer, got {type(v).__name__} {_short(v)}", name, "invalid_type")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise bad(f"'{name}' must be {rng}, got {_short(v)}", name, "invalid_value")
    return v


def _number(body: dict, name: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise bad(f"'{name}' must be a number, got {type(v).__name__} {_short(v)}", name, "invalid_type")
    if v < lo or v > hi or (lo_open and v == lo):   # compared as given: a huge int never becomes a float
        raise bad(f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {_short(v)}", name, "invalid_value")
    return float(v)


def _short(v, limit: int = 60) -> str:
    """A value for an error message, cut: a message never echoes a megabyte back."""
    text = repr(v)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _bool(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be a boolean, got {type(v).__name__} {_short(v)}", name, "invalid_type")
    return v


def _media_url(part: dict, kind: str, what: str, role: str, pw: str) -> tuple[dict, str]:
    """An image_url / video_url part -> (its object, its url): only in user messages, a non-empty 'url' string."""
    if ROLES[role] != "user":
        raise bad(f"{pw}: {what} are only accepted in user messages, not {role}", pw, "invalid_value")
    spec = part.get(kind)
    url = spec.get("url") if isinstance(spec, dict) else None
    if not isinstance(url, str) or not url:
        raise bad(f"{pw}.{kind} must be an object with a 'url' string", f"{pw}.{kind}", "invalid_type")
    return spec, url


def _messages(raw, limits: ServeLimits) -> tuple[dict, ...]:
    if not isinstance(raw, list):
        raise bad(f"'messages' must be an array of messages, got {type(raw).__name__}", "messages", "invalid_type")
    if not raw:
        raise bad("'messages' must hold at least one message", "messages", "empty_array")
    out, n_images, n_videos = [], 0, 0
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with 'role' and 'content'", where, "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            hint = " (tool calls are not implemented)" if role in ("tool", "function") else ""
            raise bad(f"{where}.role must be one of {sorted(ROLES)}, got {_short(role)}{hint}", f"{where}.role",
                      "invalid_value")
        unknown = sorted(set(m) - {"role", "content", "name"})
        if unknown:
            raise bad(f"{where} has unsupported fields {unknown}", where, "unknown_parameter")
        content = m.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for j, p in enumerate(content):
                pw = f"{where}.content[{j}]"
                kind = p.get("type") if isinstance(p, dict) else None
                if kind == "text":
                    if not isinstance(p.get("text"), str):
                        raise bad(f"{pw}.text must be a string", f"{pw}.text", "invalid_type")
                    parts.append({"type": "text", "text": p["text"]})
                elif kind == "image_url":
                    spec, url = _media_url(p, kind, "images", role, pw)
                    if spec.get("detail", "auto") not in ("auto", "low", "high"):
                        raise bad(f"{pw}.image_url.detail must be 'auto', 'low' or 'high'", f"{pw}.image_url.detail",
                                  "invalid_value")
                    n_images += 1
                    if n_images > limits.max_images:
                        raise bad(f"too many images: this server accepts at most {limits.max_images} per request "
                                  f"({pw} is image {n_images})", pw, "too_many_images")
                    parts.append(ImagePart(url, pw))
                elif kind == "video_url":
                    _, url = _media_url(p, kind, "videos", role, pw)
                    n_videos += 1
                    if n_videos > limits.max_videos:
                        raise bad(f"too many videos: this server accepts at most {limits.max_videos} per request "
                                  f"(--max-videos; {pw} is video {n_videos})", pw, "too_many_videos")
                    parts.append(VideoPart(url, pw))
                else:
                    raise bad(f"{pw}: unsupported content part type {_short(kind)} (text, image_url and video_url are "
                              f"supported)", f"{pw}.type", "invalid_value")
        else:
            raise bad(f"{where}.content must be a string or an array of content parts, got "
                      f"{type(content).__name__}", f"{where}.content", "invalid_type")
        out.append({"role": ROLES[role], "content": parts})
    if not any(p for m in out if m["role"] == "user" for p in m["content"]
               if isinstance(p, (ImagePart, VideoPart)) or p["text"].strip()):
        raise bad("'messages' has no user message with text, an image or a video: nothing to answer", "messages",
                  "empty_prompt")
    return tuple(out)


def parse_chat_request(body, limits: ServeLimits, model_id: str) -> ChatRequest:
    """The request's JSON -> ChatRequest, or APIError (400 / 404) naming the field."""
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - SUPPORTED - NOT_IMPLEMENTED)
    if unknown:
        raise bad(f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0], "unknown_parameter")
    for name in sorted(NOT_IMPLEMENTED & set(body)):
        if body[name] is not None:
            raise bad(f"'{name}' is not implemented by this server", name, "unsupported_parameter")
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name, -2.0, 2.0) not in (None, 0.0):
            raise bad(f"'{name}' is not implemented by this server; use repetition_penalty (extra_body) instead",
                      name, "unsupported_parameter")
    if _bool(body, "logprobs") or body.get("top_logprobs") is not None:
        raise bad("logprobs are not implemented by this server", "logprobs", "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required and must be a string", "model", "invalid_type")
    if model != model_id:
        raise APIError(404, f"The model `{model}` does not exist; this server serves `{model_id}`", "model",
                       "model_not_found")
    messages = _messages(body.get("messages"), limits)
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise bad("pass only one of 'max_tokens' and 'max_completion_tokens'", "max_tokens", "invalid_value")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = int_field(body, name, 1)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise bad(f"'{name}' is {max_tokens}, over this server's limit of {limits.max_tokens}", name, "invalid_value")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
                             or len(stop) > MAX_STOP):
        raise bad(f"'stop' must be a non-empty string or an array of at most {MAX_STOP} non-empty strings", "stop",
                  "invalid_value")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad("'stream_options' is only allowed with stream=true", "stream_options", "invalid_value")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("'stream_options' must be an object with only 'include_usage'", "stream_options",
                      "invalid_value")
    temperature = _number(body, "temperature", 0.0, 2.0)
    params = SamplingParams(
        max_tokens=max_tokens or 1, temperature=1.0 if temperature is None else temperature,
        top_p=_number(body, "top_p", 0.0, 1.0, lo_open=True), top_k=int_field(body, "top_k", 0, INT64[1]),
        min_p=_number(body, "min_p", 0.0, 1.0), repetition_penalty=_number(body, "repetition_penalty", 0.0, 10.0,
                                                                            lo_open=True),
        seed=int_field(body, "seed", *INT64), stop=tuple(stop or ()), ignore_eos=_bool(body, "ignore_eos"))
    return ChatRequest(model=model, messages=messages, params=params, max_tokens_given=max_tokens is not None,
                       n=int_field(body, "n", 1, limits.max_n) or 1, stream=stream,
                       include_usage=bool((options or {}).get("include_usage")))


# -- responses ------------------------------------------------------------------------------------
def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, texts: list[str], reasons: list[str], prompt_tokens: int,
               completion_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r,
                         "logprobs": None} for i, (t, r) in enumerate(zip(texts, reasons))],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(cid: str, model: str, created: int, index: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk(cid: str, model: str, created: int, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ocellus"}
