"""The HTTP server: an OpenAI-compatible chat API, a web chat page and a heat-map endpoint (Starlette ASGI).

    ocellus serve --model DIR --port 8000          # then: OpenAI(base_url="http://127.0.0.1:8000/v1")

Routes
  POST /v1/chat/completions   chat with text, images and videos (video_url parts, vLLM's form); JSON or
                              server-sent events (stream=true)
  GET  /v1/models[/{id}]      the one model this process serves
  POST /v1/ocellus/explain    {image, question}: the answer + an attention heat map (viz/attention_map.py)
  GET  /health                liveness and engine counters (no key needed, for load balancers)
  GET  /                      the chat page (static/chat.html)

A request goes: browser guards (`guards.py`: Host, Origin, JSON content type) -> key check -> body
read under the byte cap and parsed (`json_body.py`) -> `openai_schema.parse_chat_request` -> prompt
bytes checked against the context -> images fetched and decoded under the media policy and pixel
budget, prompt rendered and tokenized by the checkpoint's processor (on a worker thread, at most
`preprocess_concurrency` requests at once: this is CPU work and memory) -> `BatchEngine.submit` (429 when
the queue is full) -> events from the engine thread are handed to this event loop with
`call_soon_threadsafe` and become one JSON body or SSE chunks. When the client goes away the
request is cancelled and the engine frees its slot at the next token boundary.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from ocellus.data.processor import Processor
from ocellus.errors import ConfigError, InputError
from ocellus.hub.checkpoint import load_model
from ocellus.hub.resolve import default_model_dir
from ocellus.infer.batching import BatchEngine, Delta, Failure, Finish, QueueFull
from ocellus.infer.batching import Request as EngineRequest
from ocellus.infer.stop_text import reply_stops
from ocellus.data.processor import load_processor
from ocellus.serve import openai_schema as oa
from ocellus.serve.guards import BrowserGuard, IdleTimeoutH11, page_csp
from ocellus.serve.json_body import read_json
from ocellus.serve.limits import ServeLimits
from ocellus.serve.media import fetch_image, fetch_images, fetch_videos
from ocellus.viz.attention_map import answer_attention, overlay

STATIC = Path(__file__).resolve().parent / "static"
PREFILL_SKIP = ("input_ids", "attention_mask")  # every other processor output is a prefill input (pixel_values, ...)


class ServeState:
    """What the handlers share: the model's engine, its processor, the limits."""

    def __init__(self, model, processor, model_id: str, limits: ServeLimits, prepack: bool = True):
        self.model, self.processor, self.model_id, self.limits = model, processor, model_id, limits
        self.tokenizer = processor.tokenizer if isinstance(processor, Processor) else processor
        if processor.chat_template is None:
            raise ConfigError("serving chat needs a chat template, and this checkpoint has none "
                              "(chat_template.jinja / tokenizer_config.json)")
        self.engine = BatchEngine(model, self.tokenizer, slots=limits.slots, max_len=limits.max_context,
                                  max_queue=limits.max_queue, prefill_chunk=limits.prefill_chunk, prepack=prepack)
        self.created = int(time.time())
        self.preprocessing = asyncio.Semaphore(limits.preprocess_concurrency)  # decode + tokenize, bounded
        self.max_prompt_bytes = limits.prompt_bytes_per_token * self.engine.max_len

    def check_prompt_size(self, texts, param: str) -> None:
        """Refuse text over max_prompt_bytes (UTF-8) before it is rendered or tokenized: a 5 MB prompt would
        cost seconds and hundreds of MB only to be refused as longer than the context."""
        size = 0
        for text in texts:
            size += len(text)   # characters <= bytes: the cheap bound first, exact bytes below it
            if size <= self.max_prompt_bytes:
                size += len(text.encode()) - len(text)
            if size > self.max_prompt_bytes:
                raise oa.bad(f"This model's maximum context length is {self.engine.max_len} tokens; the {param} hold "
                             f"over {self.max_prompt_bytes:,} bytes of text, more than this server tokenizes for it "
                             f"({self.limits.prompt_bytes_per_token} bytes per context token, "
                             f"--prompt-bytes-per-token). Shorten the {param}.", param, "context_length_exceeded")


# -- plumbing ---------------------------------------------------------------------------------------
def _check_key(request: Request, limits: ServeLimits) -> None:
    if limits.api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), limits.api_key.encode()):
        raise oa.APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                          code="invalid_api_key")


async def _watch_disconnect(request: Request, on_gone) -> None:
    """Calls on_gone() when the client closes the connection (after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            on_gone()
            return


def _inputs(state: ServeState, chat: oa.ChatRequest):
    """Worker thread: fetch + decode the images and videos, render the template, tokenize. -> (input_ids, prefill)."""
    if chat.videos and not (isinstance(state.processor, Processor) and state.processor.video_token):
        raise oa.bad(f"{chat.videos[0].where}: the model `{state.model_id}` does not accept videos (it has no video "
                     f"placeholder token; video models such as Qwen2-VL do)", code="videos_not_supported")
    images = fetch_images([(p.url, p.where) for p in chat.images], state.limits)
    if images and not isinstance(state.processor, Processor):
        raise oa.bad(f"{chat.images[0].where}: the model `{state.model_id}` is text-only and does not accept "
                     f"images", code="images_not_supported")
    videos = fetch_videos([(p.url, p.where) for p in chat.videos], state.limits)
    kinds = {oa.ImagePart: "image", oa.VideoPart: "video"}
    messages = [{"role": m["role"], "content": [{"type": kinds[type(p)]} if type(p) in kinds else p
                                                for p in m["content"]]} for m in chat.messages]
    if isinstance(state.processor, Processor):
        batch = state.processor(messages=messages, images=images or None, videos=videos or None,
                                add_generation_prompt=True)
        return batch["input_ids"], {k: v for k, v in batch.items() if k not in PREFILL_SKIP}
    import torch
    plain = [{"role": m["role"], "content": "".join(p["text"] for p in m["content"])} for m in messages]
    return torch.tensor([state.tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=True)]), {}


def _budget(state: ServeState, chat: oa.ChatRequest, prompt_tokens: int):
    """The request's SamplingParams: max_tokens checked against the context (or defaulted to what is left of it),
    stop strings the template's and the request's."""
    context = state.engine.max_len
    room = context - prompt_tokens
    if room < 1 or (chat.max_tokens_given and chat.params.max_tokens > room):
        asked = f" + max_tokens={chat.params.max_tokens}" if chat.max_tokens_given else ""
        raise oa.bad(f"This model's maximum context length is {context} tokens; the messages are {prompt_tokens} "
                     f"tokens{asked}. Shorten the messages or lower max_tokens.", "messages",
                     "context_length_exceeded")
    # the template's stop strings (MiniGPT-4's "###") end every reply, with the request's own `stop`; each
    # request's Sequence applies only its own list (infer/engine_request.py), so its batch neighbours keep theirs
    params = replace(chat.params, stop=reply_stops(state.processor, chat.params.stop))
    if chat.max_tokens_given:
        return params
    return replace(params, max_tokens=min(room, state.limits.max_tokens))


# -- handlers ------------------------------------------------------------------------------------
async def chat_completions(request: Request):
    state: ServeState = request.app.state.serve
    _check_key(request, state.limits)
    chat = oa.parse_chat_request(await read_json(request, state.limits.max_request_bytes), state.limits,
                                 state.model_id)
    arrived = time.monotonic()
    state.check_prompt_size((p["text"] for m in chat.messages for p in m["content"] if isinstance(p, dict)),
                            "messages")
    try:
        async with state.preprocessing:
            input_ids, prefill = await run_in_threadpool(_inputs, state, chat)
    except (InputError, ConfigError) as e:
        raise oa.bad(str(e), "messages", "invalid_input") from e
    params = _budget(state, chat, int(input_ids.shape[1]))

    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def sink(event):  # engine thread -> this loop
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is closed (server shutting down): nobody is listening
            pass

    req = EngineRequest(input_ids, params, sink, prefill=prefill, n=chat.n,
                        deadline=arrived + state.limits.request_timeout_s)
    try:
        state.engine.submit(req)
    except QueueFull as e:
        raise oa.APIError(429, str(e), code="queue_full") from e
    except InputError as e:
        raise oa.bad(str(e), code="invalid_input") from e
    cid, prompt_tokens = oa.new_id(), req.prompt_tokens
    if chat.stream:
        return StreamingResponse(_sse(req, events, cid, chat, prompt_tokens), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    watcher = asyncio.create_task(_watch_disconnect(request, req.cancel))
    try:
        texts, reasons, tokens = [""] * chat.n, [None] * chat.n, 0
        while None in reasons:
            try:
                event = await asyncio.wait_for(events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if req.cancelled:
                    return JSONResponse(oa.APIError(499, "client closed the request").body(), status_code=499)
                continue
            if isinstance(event, Failure):
                raise oa.APIError(event.status, event.message)
            if isinstance(event, Delta):
                texts[event.choice] += event.text
            elif isinstance(event, Finish):
                if event.reason == "timeout":
                    raise oa.APIError(504, f"the request took longer than this server's timeout of "
                                           f"{state.limits.request_timeout_s:g} s (--request-timeout)",
                                      code="timeout")
                reasons[event.choice] = event.reason
                tokens += event.completion_tokens
        return JSONResponse(oa.completion(cid, state.model_id, texts, reasons, prompt_tokens, tokens))
    finally:
        watcher.cancel()
        if None in reasons:
            req.cancel()


async def _sse(req: EngineRequest, events: asyncio.Queue, cid: str, chat: oa.ChatRequest, prompt_tokens: int):
    """Server-sent events in OpenAI's chunk format: the role first, text deltas, finish_reason last,
    an optional usage chunk, then [DONE]. An error after the stream started is sent as one
    `{"error": ...}` event (the openai client raises it), since the status line has gone out."""
    created = int(time.time())
    model = chat.model

    def data(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    finished, tokens = 0, 0
    try:
        for c in range(chat.n):
            yield data(oa.chunk(cid, model, created, c, {"role": "assistant", "content": ""}))
        while finished < chat.n:
            event = await events.get()
            if isinstance(event, Failure):
                yield data(oa.APIError(event.status, event.message).body())
                return
            if isinstance(event, Delta):
                yield data(oa.chunk(cid, model, created, event.choice, {"content": event.text}))
            elif isinstance(event, Finish):
                if event.reason == "timeout":
                    yield data(oa.APIError(504, "the request took longer than this server's timeout "
                                                "(--request-timeout)", code="timeout").body())
                    return
                finished += 1
                tokens += event.completion_tokens
                yield data(oa.chunk(cid, model, created, event.choice, {}, event.reason))
        if chat.include_usage:
            yield data(oa.usage_chunk(cid, model, created, prompt_tokens, tokens))
        yield "data: [DONE]\n\n"
    finally:
        if finished < chat.n:  # the client left (the task was cancelled) or an error ended the stream
            req.cancel()


async def list_models(request: Request):
    state: ServeState = request.app.state.serve
    _check_key(request, state.limits)
    return JSONResponse({"object": "list", "data": [oa.model_card(state.model_id, state.created)]})


async def get_model(request: Request):
    state: ServeState = request.app.state.serve
    _check_key(request, state.limits)
    if request.path_params["model_id"] != state.model_id:
        raise oa.APIError(404, f"The model `{request.path_params['model_id']}` does not exist", "model",
                          "model_not_found")
    return JSONResponse(oa.model_card(state.model_id, state.created))


async def health(request: Request):
    state: ServeState = request.app.state.serve
    return JSONResponse({"status": "ok", "model": state.model_id, "engine": asdict(state.engine.stats)})


async def explain(request: Request):
    """{"image": data URL, "question": str, "max_tokens": int} -> the answer and a PNG heat map of the
    patches it attended to. Runs on the engine thread between decode steps (its hooks must not see
    the batch's forwards)."""

    state: ServeState = request.app.state.serve
    _check_key(request, state.limits)
    body = await read_json(request, state.limits.max_request_bytes)
    if not isinstance(body, dict) or not isinstance(body.get("question"), str) or not body["question"].strip():
        raise oa.bad("explain needs a JSON object with 'image' (a data URL) and a non-empty 'question'", "question")
    if not isinstance(state.processor, Processor):
        raise oa.bad(f"the model `{state.model_id}` is text-only: there is no image to explain", "image")
    max_tokens = oa.int_field(body, "max_tokens", 1, state.limits.max_tokens) or 16
    state.check_prompt_size([body["question"]], "question")
    try:
        async with state.preprocessing:
            image = await run_in_threadpool(fetch_image, body.get("image"), "image", state.limits)
    except (InputError, ConfigError) as e:   # every refused image is a 400 naming the field
        raise oa.bad(str(e), "image", "invalid_input") from e

    def job():
        result = answer_attention(state.model, state.processor, image, body["question"], max_new_tokens=max_tokens)
        png = io.BytesIO()
        overlay(result.image, result.grid, result.view_box).save(png, format="PNG")
        return {"answer": result.answer, "peak": list(result.peak), "grid": result.grid.round(5).tolist(),
                "heatmap": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}

    try:
        return JSONResponse(await asyncio.wrap_future(state.engine.call(job)))
    except (InputError, ConfigError) as e:
        raise oa.bad(str(e), "question", "invalid_input") from e


async def page(request: Request):
    html = (STATIC / "chat.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Content-Security-Policy": page_csp(html)})


# -- errors in OpenAI's shape ---------------------------------------------------------------------
async def _api_error(request: Request, exc: oa.APIError):
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException):
    code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
    return JSONResponse(oa.APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                    code=code).body(), status_code=exc.status_code)


async def _server_error(request: Request, exc: Exception):
    return JSONResponse(oa.APIError(500, f"internal error: {type(exc).__name__}: {exc}").body(), status_code=500)


def create_app(model, processor, *, model_id: str, limits: ServeLimits | None = None,
               host: str = "127.0.0.1", prepack: bool = True) -> Starlette:
    """The ASGI app for one loaded model; its engine thread runs while the app's lifespan does. host: the
    address it is bound to, for the Host check (serve/guards.py). prepack: the engine's (infer/batching.py)."""
    state = ServeState(model, processor, model_id, limits or ServeLimits(), prepack=prepack)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.engine.start()
        try:
            yield
        finally:
            state.engine.stop()

    app = Starlette(routes=[
        Route("/", page),
        Route("/health", health),
        Route("/v1/models", list_models),
        Route("/v1/models/{model_id:path}", get_model),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/ocellus/explain", explain, methods=["POST"]),
    ], exception_handlers={oa.APIError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
        middleware=[Middleware(BrowserGuard, bind_host=host, allowed_hosts=state.limits.allowed_hosts)])
    app.state.serve = state
    return app


def serve(model_dir=None, *, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
          model_id: str | None = None, dtype=None, log_level: str = "info", quantize=None, prepack: bool = True) -> None:
    """Load a checkpoint (default: the embedded model) and serve it until interrupted."""
    import uvicorn

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    model = load_model(model_dir, dtype=dtype, quantize=quantize).eval()
    app = create_app(model, load_processor(model_dir), model_id=model_id or model_dir.resolve().name,
                     limits=limits, host=host, prepack=prepack)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5, http=IdleTimeoutH11,
                timeout_keep_alive=app.state.serve.limits.idle_timeout_s)
