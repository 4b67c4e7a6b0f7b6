"""Browser-facing defaults (issue 20): a web page cannot use the server through the user's browser. POST bodies
must be JSON (a text/plain or form post needs no CORS preflight: CSRF), a foreign Host is refused (DNS
rebinding), a foreign Origin is refused, the page carries CSP / frame / nosniff headers, and connections that
do not send a complete request head within the idle timeout are closed (silent and slowloris clients alike)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from ocellus.serve.guards import BrowserGuard
from ocellus.serve.limits import ServeLimits
from tests.serve.conftest import API_KEY, MODEL_ID, asgi_call

BODY = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()


def request(url: str, *, method: str = "POST", body: bytes | None = BODY, headers=None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                                 headers={"Authorization": f"Bearer {API_KEY}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; "
                                          "boundary=x", None])
def test_post_must_be_json(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    for key in (API_KEY, None):   # refused before the key is looked at: a CSRF post carries none
        req_headers = {**headers} if key else {**headers, "Authorization": ""}
        status, _, body = request(server.url + "/v1/chat/completions", headers=req_headers)
        assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type", body
    status, _, _ = request(server.url + "/v1/chat/completions",
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200
    assert server.health()["status"] == "ok"


def test_foreign_host_is_refused(server):
    """DNS rebinding: the attacker's name in Host. The official client, the health check and the page."""
    evil = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0,
                         default_headers={"Host": "rebind.attacker.example"})
    with pytest.raises(openai.BadRequestError) as e:
        evil.models.list()
    assert e.value.code == "invalid_host"
    for path in ("/health", "/"):
        status, _, body = request(server.url + path, method="GET", headers={"Host": "rebind.attacker.example:80"})
        assert status == 400 and b"invalid_host" in body
    port = server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert request(server.url + "/health", method="GET", headers={"Host": host})[0] == 200


def test_foreign_origin_is_refused(server):
    for origin in ("http://attacker.example", "null", "http://127.0.0.1:1"):
        status, _, body = request(server.url + "/v1/chat/completions",
                                  headers={"Content-Type": "application/json", "Origin": origin})
        assert status == 403 and json.loads(body)["error"]["code"] == "invalid_origin", (origin, body)
    evil = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0,
                         default_headers={"Origin": "https://attacker.example"})
    with pytest.raises(openai.PermissionDeniedError):
        evil.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    status, _, _ = request(server.url + "/v1/chat/completions",   # the page's own origin: its fetches work
                           headers={"Content-Type": "application/json", "Origin": server.url})
    assert status == 200


def test_page_security_headers(server):
    status, headers, html = request(server.url + "/", method="GET")
    assert status == 200
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    script = re.search(r"<script>(.*?)</script>", html.decode(), re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp   # only the page's own script runs
    assert "unsafe-inline" not in csp
    status, headers, _ = request(server.url + "/health", method="GET")
    assert {k.lower(): v for k, v in headers.items()}["x-content-type-options"] == "nosniff"


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed the socket (None if it did not), sending `trickle` a byte at a time."""
    start = time.monotonic()
    sock.settimeout(0.5)
    for i in range(int(seconds / 0.5)):
        if trickle:
            try:
                sock.send(trickle[i % len(trickle):i % len(trickle) + 1])
            except OSError:
                return time.monotonic() - start
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def test_idle_and_slow_connections_are_closed(server):
    """The default --idle-timeout (5 s): a silent connection and one trickling a header byte every 0.5 s are both
    closed; a request sent at once is answered on a connection of the same age."""
    host, port = server.url.rsplit("/", 1)[1].split(":")
    results = {}

    def watch(name, trickle):
        with socket.create_connection((host, int(port))) as sock:
            if trickle:
                sock.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            results[name] = _closed_within(sock, 12, trickle)
    threads = [threading.Thread(target=watch, args=args) for args in (("silent", b""), ("slowloris", b"X-a: b\r\n"))]
    for t in threads:
        t.start()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    for t in threads:
        t.join()
    assert results["silent"] is not None and 3 < results["silent"] < 9, results
    assert results["slowloris"] is not None and 3 < results["slowloris"] < 9, results
    assert server.health()["status"] == "ok"


def test_allowed_hosts_and_bind_address():
    """--allowed-host adds names (for Host and Origin); bound to all interfaces, IP literals are served (DNS
    rebinding needs a name); '*' turns the checks off."""
    def status(guard, headers, method="GET"):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return asyncio.run(asgi_call(BrowserGuard(app, bind_host=guard[0], allowed_hosts=guard[1]), method,
                                     "/health", headers))[0]
    loopback, named, wildcard, anything = ("127.0.0.1", ()), ("127.0.0.1", ("Chat.Example.com",)), ("0.0.0.0", ()), \
        ("127.0.0.1", ("*",))
    assert status(loopback, {"host": "chat.example.com"}) == 400
    assert status(named, {"host": "chat.example.com:443", "origin": "https://chat.example.com"}) == 200
    assert status(named, {"host": "chat.example.com", "origin": "https://other.example.com"}) == 403
    assert status(loopback, {"host": "[::1]:8000"}) == 200 and status(loopback, {"host": "app.localhost"}) == 200
    assert status(loopback, {"host": "10.1.2.3:8000"}) == 400
    assert status(wildcard, {"host": "10.1.2.3:8000"}) == 200 and status(wildcard, {"host": "evil.example"}) == 400
    assert status(anything, {"host": "evil.example", "origin": "http://evil.example"}) == 200
    assert ServeLimits(allowed_hosts=("a.example",)).allowed_hosts == ("a.example",)
    from ocellus.cli import build_parser
    args = build_parser().parse_args(["serve", "--allowed-host", "a.example", "--allowed-host", "b.example",
                                      "--idle-timeout", "2.5"])
    assert args.allowed_host == ["a.example", "b.example"] and args.idle_timeout == 2.5
