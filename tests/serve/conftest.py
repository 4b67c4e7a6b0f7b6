"""A real `ocellus serve` process on loopback for the API tests, and image helpers.

The server is started once per test session (model loading dominates) with small limits so the
bad-input battery can reach each of them cheaply; every test talks to it over HTTP.
"""
from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from ocellus.serve.process import ServerProcess

API_KEY = "sk-ocellus-test"
MODEL_ID = "llava-tiny-shapes"
TEST_LIMITS = dict(max_images=4, max_image_pixels=1024 * 1024, max_request_pixels=2_500_000, max_tokens=200,
                   max_request_bytes=2_000_000, slots=4, max_queue=32, max_n=3)


@contextlib.contextmanager
def loopback_http(handler: type[http.server.BaseHTTPRequestHandler]):
    """A threaded HTTP server on a free loopback port answering with `handler` -> its port; shut down after."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("allowed-images")
    shape_image().save(d / "red.png")
    return d


@pytest.fixture(scope="session")
def server(image_dir):
    limits = [f"--{k.replace('_', '-')}={v}" for k, v in TEST_LIMITS.items()]
    srv = ServerProcess("--api-key", API_KEY, "--allow-image-dir", str(image_dir), *limits,
                        env={"OMP_NUM_THREADS": "1"})
    yield srv
    srv.stop()


@pytest.fixture()
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def shape_image(color=(220, 30, 30), size=(48, 48)) -> Image.Image:
    """A coloured square on white, like the shapes world the embedded model was trained on."""
    img = Image.new("RGB", size, (255, 255, 255))
    w, h = size
    img.paste(color, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    return img


def data_url(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def post(url: str, body, *, key: str | None = API_KEY, raw: bytes | None = None, method: str = "POST",
         timeout: float = 60) -> tuple[int, dict]:
    """A plain HTTP request (for what the openai client will not send: broken JSON, no key...)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def asgi_call(app, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    """One HTTP request through an ASGI app in process: -> (status, response headers)."""
    import asyncio
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "scheme": "http", "http_version": "1.1", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000), "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    messages, start = [{"type": "http.request", "body": body, "more_body": False}], []

    async def receive():
        return messages.pop() if messages else await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            start.append(message)
    await app(scope, receive, send)
    return start[0]["status"], {k.decode(): v.decode() for k, v in start[0]["headers"]}
