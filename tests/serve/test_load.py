"""Load test: 200 requests from 16 concurrent clients against one server on loopback. A mix of
streamed and plain requests with images, bad requests and clients that hang up mid-stream;
zero 5xx, every good request answered, the engine idle at the end, and memory flat (the
resident size after the last 150 requests within a few MB of what it was after the first 50)."""
from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from ocellus.serve.process import ServerProcess
from tests.serve.conftest import MODEL_ID, data_url, post, shape_image

pytestmark = pytest.mark.slow

COLORS = [(220, 30, 30), (30, 200, 30), (30, 40, 220), (200, 200, 30)]


def request_kind(i: int) -> str:
    return ("stream", "plain", "stream", "bad", "plain", "hangup", "stream", "plain")[i % 8]


def one(url: str, i: int) -> tuple[str, int]:
    """Send request i; -> (kind, HTTP status)."""
    kind = request_kind(i)
    content = [{"type": "image_url", "image_url": {"url": data_url(shape_image(COLORS[i % 4]))}},
               {"type": "text", "text": "Describe the image in detail."}]
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 24,
            "temperature": 0.7, "seed": i}
    if kind == "bad":
        body["max_tokens"] = -1
        return kind, post(url + "/v1/chat/completions", body, key=None)[0]
    if kind == "plain":
        status, answer = post(url + "/v1/chat/completions", body, key=None)
        assert status != 200 or answer["choices"][0]["finish_reason"] in ("stop", "length")
        return kind, status
    body.update(stream=True, max_tokens=120 if kind == "hangup" else 24, ignore_eos=kind == "hangup")
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        status = resp.status
        lines = []
        for line in resp:
            lines.append(line)
            if kind == "hangup" and len(lines) >= 4:
                break  # the client leaves mid-answer
        if kind == "stream":
            assert lines[-2].strip() == b"data: [DONE]", lines[-3:]
    return kind, status


def test_200_requests_16_clients_no_5xx_memory_flat():
    with ServerProcess("--slots", "16", "--max-queue", "256", env={"OMP_NUM_THREADS": "1"}) as srv:
        with ThreadPoolExecutor(16) as pool:
            first = list(pool.map(lambda i: one(srv.url, i), range(50)))
            rss_warm = srv.rss_bytes()
            rest = list(pool.map(lambda i: one(srv.url, i), range(50, 200)))
        results = first + rest
        statuses = [s for _, s in results]
        assert len(results) == 200 and not [s for s in statuses if s >= 500]
        assert all(s == 400 for k, s in results if k == "bad")
        assert all(s == 200 for k, s in results if k != "bad")
        deadline = time.time() + 30
        while time.time() < deadline and (srv.health()["engine"]["running"] or srv.health()["engine"]["waiting"]):
            time.sleep(0.1)
        engine = srv.health()["engine"]
        assert engine["running"] == 0 and engine["waiting"] == 0 and engine["failed"] == 0
        assert engine["completed"] + engine["cancelled"] == sum(k != "bad" for k, _ in results)
        grown = srv.rss_bytes() - rss_warm
        assert grown < 32 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MB over 150 requests"
