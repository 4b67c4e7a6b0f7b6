"""Videos through `ocellus serve`: vLLM's {"type": "video_url", "video_url": {"url": ...}} parts sent by the real
`openai` client to a tiny Qwen2-VL (random weights, the video parity fixture's tokenizer and processor configs),
answered exactly as the Python path (ChatSession on the same checkpoint) answers; each video limit refused
with a 400 naming its flag; a bad video request next to a good one leaves the good one's answer unchanged."""
from __future__ import annotations

import base64
import io
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
from PIL import Image

import ocellus
from ocellus.chat import ChatSession
from ocellus.cli import main
from ocellus.hub.checkpoint_dir import read_config
from ocellus.models.families.qwen2_vl.modeling import build_qwen2_vl
from ocellus.serve.process import ServerProcess
from tests.parity._init import spread_init
from tests.serve.conftest import API_KEY, MODEL_ID, post

FIXTURE = Path(__file__).resolve().parents[1] / "parity" / "fixtures" / "qwen2_vl_video"
LIMITS = {"--max-videos": 1, "--max-video-frames": 6, "--max-video-pixels": 6 * 48 * 48, "--max-video-bytes": 60_000}


def clip(n: int = 4, size=(48, 32), seed: int = 0, fmt: str = "GIF") -> bytes:
    """An animated file of n frames: a bright square moving right over noise (w, h = size)."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(n):
        a = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
        a[8:20, 4 + 6 * t:16 + 6 * t] = (240, 60, 40)
        frames.append(Image.fromarray(a))
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=500, loop=0)
    return buf.getvalue()


def data_url(raw: bytes, mime: str = "image/gif") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def video_message(question: str, url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The fixture's tokenizer and processor configs + a random tiny Qwen2-VL (video_token_id set)."""
    d = tmp_path_factory.mktemp("qwen2vl-video")
    for f in FIXTURE.iterdir():
        if f.suffix in (".json",):
            shutil.copy(f, d / f.name)
    # N(0, 1/fan_in) weights: attention far from uniform, so the answer depends on every frame and position
    ocellus.save(spread_init(build_qwen2_vl(read_config(d)), qk_gain=2.0), d)
    return d


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("allowed-videos")
    (d / "clip.gif").write_bytes(clip(seed=3))
    return d


@pytest.fixture(scope="module")
def video_server(model_dir, video_dir):
    limits = [f"{k}={v}" for k, v in LIMITS.items()]
    srv = ServerProcess("--model", str(model_dir), "--model-name", "tiny-qwen2-vl", "--api-key", API_KEY,
                        "--allow-image-dir", str(video_dir), "--slots", "2", *limits, env={"OMP_NUM_THREADS": "1"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def vclient(video_server):
    return openai.OpenAI(base_url=video_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(model_dir):
    return ocellus.load(model_dir), ocellus.load_processor(model_dir)


def reference(local, question: str, video, max_tokens: int = 8) -> str:
    """The Python path: a ChatSession on the same checkpoint, greedy."""
    model, proc = local
    session = ChatSession(model, proc, max_new_tokens=max_tokens)
    return "".join(session.send(question, videos=[video]))


def test_video_url_answer_equals_the_python_path(vclient, local, video_dir):
    raw = clip(seed=1)
    assert reference(local, "which way?", raw) != reference(local, "which way?", clip(seed=3))  # the video matters
    r = vclient.chat.completions.create(model="tiny-qwen2-vl", messages=video_message("which way?", data_url(raw)),
                                        max_tokens=8, temperature=0)
    want = reference(local, "which way?", raw)
    assert r.choices[0].message.content == want and want.strip()
    # the prompt holds the video's pads: 4 frames of 48x32 within the video budget -> t=2, h=4, w=6 -> 12 pads
    _, proc = local
    batch = proc(messages=[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "which way?"}]}],
                 videos=[raw])
    assert r.usage.prompt_tokens == batch["input_ids"].shape[1]
    assert batch["video_grid_thw"].tolist() == [[2, 4, 6]]
    assert int((batch["input_ids"] == proc.video_token_id).sum()) == 12
    # a local file under --allow-image-dir, the same rules as images
    f = vclient.chat.completions.create(model="tiny-qwen2-vl", max_tokens=8, temperature=0,
                                        messages=video_message("which way?", (video_dir / "clip.gif").as_uri()))
    assert f.choices[0].message.content == reference(local, "which way?", video_dir / "clip.gif")


@pytest.mark.parametrize("raw, flag", [
    (clip(n=7), "--max-video-frames=6"),                          # one frame over: refused before decoding it
    (clip(n=4, size=(96, 64)), "--max-video-pixels"),             # 4 x 96 x 64 > 6 x 48 x 48
    (b"GIF89a" + bytes(70_000), "--max-video-bytes"),             # over 60,000 bytes encoded
])
def test_each_video_limit_is_a_400_naming_its_flag(vclient, raw, flag):
    with pytest.raises(openai.BadRequestError) as e:
        vclient.chat.completions.create(model="tiny-qwen2-vl", messages=video_message("?", data_url(raw)), max_tokens=4)
    assert flag in e.value.message and "messages[0].content[0]" in e.value.message


def test_bad_video_parts_are_refused_by_name(video_server):
    url = video_server.url + "/v1/chat/completions"
    two = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data_url(clip())}}] * 2}]
    status, body = post(url, {"model": "tiny-qwen2-vl", "messages": two})
    assert status == 400 and body["error"]["code"] == "too_many_videos" and "--max-videos" in body["error"]["message"]
    mp4 = video_message("?", "data:video/mp4;base64," + base64.b64encode(b"\0\0\0\x18ftypmp42").decode())
    status, body = post(url, {"model": "tiny-qwen2-vl", "messages": mp4})
    assert status == 400 and "image/gif" in body["error"]["message"]
    status, body = post(url, {"model": "tiny-qwen2-vl", "messages": video_message("?", "file:///etc/passwd")})
    assert status == 400 and "outside the allowed image directory" in body["error"]["message"]
    status, body = post(url, {"model": "tiny-qwen2-vl", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": "not an object"}]}]})
    assert status == 400 and body["error"]["param"] == "messages[0].content[0].video_url"


def test_a_bad_video_next_to_a_good_one_harms_nothing(vclient, local, video_server):
    good, results = clip(seed=5), {}

    def send(name, raw):
        try:
            results[name] = vclient.chat.completions.create(
                model="tiny-qwen2-vl", messages=video_message("which way?", data_url(raw)), max_tokens=8,
                temperature=0).choices[0].message.content
        except openai.APIError as e:
            results[name] = e
    threads = [threading.Thread(target=send, args=(f"bad{i}", clip(n=9))) for i in range(3)]
    threads.append(threading.Thread(target=send, args=("good", good)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(results[f"bad{i}"], openai.BadRequestError) for i in range(3))
    assert results["good"] == reference(local, "which way?", good)
    assert video_server.health()["status"] == "ok"


def test_a_model_without_video_refuses_video_parts(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=video_message("?", data_url(clip())), max_tokens=4)
    assert "does not accept videos" in e.value.message


def test_cli_chat_video_flag_and_command(model_dir, local, video_dir, monkeypatch, capsys):
    """`ocellus chat --video CLIP` attaches the clip to the first message, `/video PATH` to the next one; a bad
    /video is one error line and the session goes on (exit 2). Replies equal ChatSession's."""
    clip_path = video_dir / "clip.gif"
    script = f"which way?\n/video {video_dir / 'missing.gif'}\n/video {clip_path}\nand now?\n/quit\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["chat", "--model", str(model_dir), "--video", str(clip_path), "--max-new-tokens", "8"]) == 2
    out, err = capsys.readouterr()
    model, proc = local
    session = ChatSession(model, proc, max_new_tokens=8)
    first = "".join(session.send("which way?", videos=[clip_path]))
    second = "".join(session.send("and now?", videos=[clip_path]))   # the first clip is still in the history
    assert out == first + "\n" + second + "\n"
    assert "missing.gif" in err and len([line for line in err.splitlines() if "error" in line.lower()]) == 1

