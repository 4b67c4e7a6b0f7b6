"""BrowserGuard's decisions on names and media types, called directly (no server): only `localhost` and its
subdomains `*.localhost` are loopback names (RFC 6761), not any name ending in the letters "localhost"; a JSON
POST with a charset parameter is JSON (RFC 9110 media-type parameters); and the page's CSP hashes each inline
script / style body whole, newlines included (the sha-256 of the exact text, as a browser computes it)."""
import base64
import hashlib

import pytest

from ocellus.serve.guards import BrowserGuard, page_csp


def _refusal(headers: dict, method: str = "GET", bind: str = "127.0.0.1", allowed=()):
    guard = BrowserGuard(None, bind_host=bind, allowed_hosts=allowed)
    scope = {"type": "http", "method": method,
             "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]}
    return guard.refusal(scope)


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "app.localhost", "a.b.localhost:1", "127.0.0.1:80"])
def test_loopback_names_are_served(host):
    assert _refusal({"host": host}) is None


@pytest.mark.parametrize("host", ["evillocalhost", "evil-localhost:8000", "localhost.evil.example", "mylocalhost"])
def test_names_merely_ending_in_localhost_are_refused(host):
    e = _refusal({"host": host})
    assert e is not None and (e.status, e.code) == (400, "invalid_host")


@pytest.mark.parametrize("kind", ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"])
def test_json_posts_with_parameters_pass(kind):
    assert _refusal({"host": "127.0.0.1:8000", "content-type": kind}, "POST") is None


def test_csp_hashes_multi_line_inline_bodies_whole():
    script, style = "\nconst a = 1;\nconsole.log(a);\n", "\nbody { color: red; }\n"
    csp = page_csp(f"<html><style>{style}</style><body><script>{script}</script></body></html>")

    def h(text):
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"
    assert f"script-src {h(script)};" in csp
    assert f"style-src {h(style)};" in csp
