"""`ocellus serve` in a child process, up and healthy before the constructor returns.

Used by the API tests (a real server on loopback, real sockets) and by benchmarks/serve.py:

    with ServerProcess("--model", DIR, "--slots", "16") as srv:
        OpenAI(base_url=srv.url + "/v1", api_key="-").chat.completions.create(...)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args: str, env: dict | None = None, startup_timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ocellus.cli", "serve", "--port", str(self.port), "--log-level", "warning", *args]
        # a file, not a pipe: nobody reads a pipe while the server runs, and a full pipe would block it
        self.log = tempfile.NamedTemporaryFile("w+", prefix="ocellus-serve-", suffix=".log")
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.output()}")
            try:
                if self.health()["status"] == "ok":
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {startup_timeout:g} s")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return json.loads(r.read())

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def rss_bytes(self) -> int:
        """The server's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS in /proc/{self.proc.pid}/status")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
