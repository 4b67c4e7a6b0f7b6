"""Memory amplification (issue 20): image pixels are budgeted per request on the headers, before anything is
decoded; prompt text over the byte cap is refused before it is rendered or tokenized; decoding and tokenizing
run for a bounded number of requests at once. A server under an abusive mix (eight 4096x4096 PNGs in one
small request, 5.5 MB prompts, large accepted images, all at once) keeps its peak resident memory bounded."""
from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from PIL import Image

from ocellus.errors import InputError
from ocellus.serve import media
from ocellus.serve.limits import ServeLimits
from ocellus.serve.process import ServerProcess
from tests.serve.conftest import MODEL_ID, asgi_call, data_url, post, shape_image
from tests.serve.test_bad_input import b64, png_header_only

PEAK_GROWTH_LIMIT = 500 * 2**20   # measured on the 2-core machine: 4.0 GB before the budgets, 0.2 GB after


def big_png_url(size: int = 4096) -> str:
    """A size x size PNG of one flat colour: ~100 KB on the wire for 4096, 48 MB decoded as RGB."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_pixel_budget_is_decided_on_headers_before_decoding():
    """Header-only PNGs (no pixel data at all) within the per-image limit but over the request's budget are
    refused by the budget: nothing was decoded (decoding them would fail as truncated)."""
    limits = ServeLimits(max_image_pixels=2000 * 2000, max_request_pixels=5_000_000)
    parts = [(b64(png_header_only(2000, 2000)), f"messages[0].content[{i}]") for i in range(2)]
    with pytest.raises(InputError, match=r"messages\[0\].content\[1\]: the request's images add up to 8,000,000 "
                                         r"pixels, over this server's budget of 5,000,000"):
        media.fetch_images(parts, limits)
    small = [(data_url(shape_image()), f"img {i}") for i in range(3)]   # 3 x 48 x 48 = 6,912 pixels
    assert [im.size for im in media.fetch_images(small, ServeLimits(max_request_pixels=6912))] == [(48, 48)] * 3
    with pytest.raises(InputError, match="img 2: the request's images add up to 6,912"):
        media.fetch_images(small, ServeLimits(max_request_pixels=6911))
    with pytest.raises(InputError, match="over the limit max_pixels"):   # the per-image rule keeps its message
        media.fetch_images(parts[:1], ServeLimits(max_image_pixels=1000, max_request_pixels=10**9))


def test_pixel_budget_through_the_api(client, server):
    """Three 1000x1000 header-only PNGs, each within the test server's 1,048,576-pixel limit, add up past its
    2,500,000-pixel request budget: a 400 naming the third image, decided on the headers."""
    parts = [{"type": "image_url", "image_url": {"url": b64(png_header_only(1000, 1000))}} for _ in range(3)]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, max_tokens=2, messages=[
            {"role": "user", "content": parts + [{"type": "text", "text": "What is it?"}]}])
    assert "messages[0].content[2]: the request's images add up to 3,000,000 pixels" in e.value.message
    assert server.health()["status"] == "ok"


def test_long_prompt_refused_before_tokenizing(client, server):
    """1.5 MB of text (the test server's body cap is 2 MB) against a 256-token context: refused on its byte count
    at once (tokenizing it first took seconds), through the official client."""
    text = "colour " * 220_000
    start = time.monotonic()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": text}], max_tokens=2)
    assert time.monotonic() - start < 1.5
    assert e.value.code == "context_length_exceeded" and e.value.body["param"] == "messages"
    assert "--prompt-bytes-per-token" in e.value.message
    status, answer = post(server.url + "/v1/ocellus/explain", {"image": data_url(shape_image()), "question": text})
    assert status == 400 and answer["error"]["param"] == "question", answer
    assert server.health()["status"] == "ok"


def test_preprocessing_runs_for_a_bounded_number_of_requests(monkeypatch):
    """Six requests at once, preprocess_concurrency=2: never more than two decode / tokenize together."""
    import asyncio
    import json
    import threading

    import ocellus
    from ocellus.serve import app as app_module
    d = ocellus.default_model_dir()
    app = app_module.create_app(ocellus.load(d), ocellus.load_processor(d), model_id=MODEL_ID,
                                limits=ServeLimits(preprocess_concurrency=2))
    running, peak, lock = [0], [0], threading.Lock()

    def slow_inputs(state, chat):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        raise InputError("refused after preprocessing")
    monkeypatch.setattr(app_module, "_inputs", slow_inputs)
    body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()
    headers = {"host": "127.0.0.1:8000", "content-type": "application/json"}

    async def six_at_once():
        return await asyncio.gather(*[asgi_call(app, "POST", "/v1/chat/completions", headers, body) for _ in range(6)])
    assert [status for status, _ in asyncio.run(six_at_once())] == [400] * 6
    assert peak[0] == 2


def _rss_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def abusive_mix(url: str) -> list[int]:
    """Two requests of eight 4096x4096 PNGs (~0.8 MB each), two 5.4 MB prompts and two requests with one
    2896x2896 PNG, all at once; -> their statuses."""
    big = big_png_url()
    eight = [{"type": "image_url", "image_url": {"url": big}} for _ in range(8)] + [{"type": "text", "text": "Hi"}]
    one = [{"type": "image_url", "image_url": {"url": big_png_url(2896)}},   # half the budget: accepted, decoded
           {"type": "text", "text": "What color is the shape?"}]
    huge_prompt = "What colour is the circle? " * 200_000   # 5.4 MB

    def ask(content):
        return post(url + "/v1/chat/completions", {"model": MODEL_ID, "max_tokens": 1,
                                                   "messages": [{"role": "user", "content": content}]}, key=None,
                    timeout=300)[0]
    mix = [eight, huge_prompt, one, eight, huge_prompt, one]
    with ThreadPoolExecutor(len(mix)) as pool:
        return list(pool.map(ask, mix))


def test_peak_memory_under_an_abusive_mix_stays_bounded():
    with ServerProcess(env={"OMP_NUM_THREADS": "1"}) as srv:
        assert post(srv.url + "/v1/chat/completions", {"model": MODEL_ID, "max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(shape_image())}},
                                         {"type": "text", "text": "What color is the shape?"}]}]}, key=None)[0] == 200
        before = _rss_peak(srv.proc.pid)
        statuses = abusive_mix(srv.url)
        grown = _rss_peak(srv.proc.pid) - before
        assert statuses == [400, 400, 200, 400, 400, 200], statuses
        assert grown < PEAK_GROWTH_LIMIT, f"peak RSS grew by {grown / 2**20:.0f} MB"
        assert srv.health()["status"] == "ok"
