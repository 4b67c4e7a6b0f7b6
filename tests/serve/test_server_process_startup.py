"""ServerProcess's side of starting and stopping a server (ocellus/serve/process.py), without a model: the child is
a stand-in whose command line and environment are recorded, and /health is answered by a loopback HTTP server
that says 503 while "loading" before it says ok. What is checked: the port the child is told is the one polled,
the caller's environment wins over the parent's, a 503 is waited through, and a child that ignores SIGTERM is
killed rather than waited on forever."""
from __future__ import annotations

import http.server
import json
import socket
import subprocess

import pytest

from ocellus.serve import process
from ocellus.serve.process import ServerProcess
from tests.serve.conftest import loopback_http


def test_free_port_is_a_port_that_can_be_bound():
    port = process.free_port()
    assert isinstance(port, int) and 1024 <= port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


class FakeChild:
    """A Popen stand-in: alive until terminated; `hangs` makes its first wait(timeout) expire (SIGTERM ignored)."""

    def __init__(self, cmd, env=None, hangs=False, **kw):
        self.cmd, self.env, self.hangs, self.calls, self.returncode = cmd, env, hangs, [], None

    def poll(self):
        return self.returncode

    def terminate(self):
        self.calls.append("terminate")

    def kill(self):
        self.calls.append("kill")
        self.returncode = -9

    def wait(self, timeout=None):
        self.calls.append("wait")
        if self.hangs and self.returncode is None:
            raise subprocess.TimeoutExpired("server", timeout)
        self.returncode = self.returncode if self.returncode is not None else 0
        return self.returncode


@pytest.fixture()
def health_server():
    """/health answers 503 twice (a server still loading its model), then {"status": "ok"}; -> (port, hits)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            ok = self.path == "/health" and len(hits) > 2
            body = json.dumps({"status": "ok"} if ok else {"error": "loading"}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    with loopback_http(Handler) as port:
        yield port, hits


def test_the_child_is_told_the_polled_port_and_a_loading_server_is_waited_for(health_server, monkeypatch):
    port, hits = health_server
    children = []
    monkeypatch.setattr(process, "free_port", lambda host="127.0.0.1": port)
    monkeypatch.setattr(process.subprocess, "Popen", lambda cmd, **kw: children.append(FakeChild(cmd, **kw))
                        or children[-1])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    srv = ServerProcess("--model", "m", env={"OMP_NUM_THREADS": "3"}, startup_timeout=30)
    try:
        cmd = children[0].cmd
        assert srv.url == f"http://127.0.0.1:{port}"
        assert cmd[cmd.index("--port") + 1] == str(port) and cmd[-2:] == ["--model", "m"]
        assert children[0].env["OMP_NUM_THREADS"] == "3"        # the caller's env over the parent's
        assert hits == ["/health"] * 3                          # two 503s waited through, then ok
    finally:
        srv.stop()
    assert children[0].calls[:2] == ["terminate", "wait"]


def test_a_child_that_ignores_sigterm_is_killed_then_reaped(tmp_path):
    srv = ServerProcess.__new__(ServerProcess)
    srv.proc = FakeChild(["server"], hangs=True)
    srv.log = open(tmp_path / "log", "w+")
    srv.stop()
    assert srv.proc.calls == ["terminate", "wait", "kill", "wait"] and srv.log.closed
