"""Browser-facing guards: what keeps a web page the user visits from using a server on their machine.

Without an API key a browser can reach a loopback server two ways: a page posting a "simple" request (a
`text/plain` or form body needs no CORS preflight: CSRF), and a page whose host name is re-pointed at
127.0.0.1 after it loaded (DNS rebinding: its requests carry the attacker's name in `Host`). So, on every
request (`BrowserGuard`, pure ASGI so streams pass untouched):
- `Host` must name this server: localhost names, the bound address, any IP literal when bound to all
  interfaces (a rebinding attack needs a DNS name), or an `--allowed-host` (`*` turns the check off);
  else 400 `invalid_host`;
- `Origin`, when present, must be this server's own origin (same host:port as `Host`) or an allowed host;
  else 403 `invalid_origin`;
- a POST must be `application/json`, else 415 `unsupported_media_type`;
- every response says `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`;
  the page adds a Content-Security-Policy that runs only its own inline script and style (by hash).
`IdleTimeoutH11` closes connections that do not complete a request head within the idle timeout (uvicorn
times out only idle keep-alive connections, and any byte re-arms that: a silent or trickling client
would hold its socket forever).
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from urllib.parse import urlsplit

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ocellus.serve.openai_schema import APIError

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


def _hostname(netloc: str) -> str | None:
    try:
        return urlsplit(f"//{netloc}").hostname   # lower case, port and IPv6 brackets removed
    except ValueError:
        return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class BrowserGuard:
    """ASGI middleware: the Host / Origin / content-type checks and security headers of the module docstring."""

    def __init__(self, app, *, bind_host: str, allowed_hosts=()):
        self.app, self.bind = app, bind_host.lower().strip("[]")
        self.allowed = frozenset(h.lower() for h in allowed_hosts)

    def host_ok(self, name: str | None) -> bool:
        if name is None:
            return False
        if "*" in self.allowed or name in LOCAL_NAMES or name.endswith(".localhost") or name in self.allowed:
            return True
        return name == self.bind or (self.bind in WILDCARD_BINDS and _is_ip(name))

    def refusal(self, scope) -> APIError | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        if host is not None and not self.host_ok(_hostname(host)):
            return APIError(400, f"Host {host[:100]!r} is not a name this server answers to (DNS rebinding guard); "
                                 f"start it with --allowed-host NAME to serve it", code="invalid_host")
        origin = headers.get("origin")
        if origin is not None and "*" not in self.allowed:
            netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
            if not netloc or (netloc != (host or "").lower() and _hostname(netloc) not in self.allowed):
                return APIError(403, f"Origin {origin[:100]!r} may not call this server (cross-site request guard); "
                                     f"start it with --allowed-host NAME for that site", code="invalid_origin")
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                return APIError(415, f"POST bodies must be sent as Content-Type: application/json, got "
                                     f"{kind[:60]!r}", code="unsupported_media_type")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)
        error = self.refusal(scope)
        if error is None:
            return await self.app(scope, receive, secured)
        from starlette.responses import JSONResponse
        await JSONResponse(error.body(), status_code=error.status)(scope, receive, secured)


def page_csp(html: str) -> str:
    """A Content-Security-Policy for a self-contained page: its inline <script> and <style> by hash, images
    from data: URLs, requests to this origin only, no frames, forms or plugins."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)
    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self' data: "
            f"blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class IdleTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request head: timeout_keep_alive seconds from the
    connection (or the previous response) to a complete request line and headers, however the bytes trickle."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._head_deadline is not None:  # the head is in
            self._head_deadline.cancel()
            self._head_deadline = None

    def connection_lost(self, exc) -> None:
        if getattr(self, "_head_deadline", None) is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if getattr(self, "_head_deadline", None) is not None:
            self._head_deadline.cancel()
        self._head_deadline = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:  # (not a pipelined head)
            self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
