"""Video sources (data/video_file.load_video): animated GIF / APNG / WebP files, bytes and data URLs, a directory of
frames, frame lists and arrays -> the same frames, with the file's frame rate; each limit refused naming it (and
reading stops at the first frame over max_frames); containers Pillow cannot read say what to do. Video parts
are accepted only where a video processor asks for them. The slot cache keeps each row's M-RoPE delta."""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ocellus.data.messages import normalize
from ocellus.data.video import Video
from ocellus.data import video_file
from ocellus.data.image import load_image
from ocellus.data.video_file import load_video
from ocellus.errors import InputError
from ocellus.infer.slot_cache import SlotKVCache
from ocellus.nn.kv_cache import StaticKVCache


def _frames(n=5, size=(30, 20)):
    return [Image.fromarray(np.full((size[1], size[0], 3), 30 * i, np.uint8)) for i in range(n)]


def _encoded(fmt: str, n=5, duration=250) -> bytes:
    frames, buf = _frames(n), io.BytesIO()
    lossless = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=duration, loop=0, **lossless)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_files_decode_every_frame_with_their_rate(fmt, tmp_path):
    raw = _encoded(fmt)
    path = tmp_path / f"clip.{fmt.lower()}"
    path.write_bytes(raw)
    url = f"data:image/{fmt.lower()};base64," + base64.b64encode(raw).decode()
    for src in (raw, path, str(path), url):
        video = load_video(src)
        assert len(video) == 5 and video.fps == pytest.approx(4.0) and video.frames[0].size == (30, 20)
        assert [f.getpixel((3, 3))[0] for f in video.frames] == [0, 30, 60, 90, 120]


def test_directories_lists_and_arrays(tmp_path):
    for i, f in enumerate(_frames(3)):
        f.save(tmp_path / f"frame_{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    video = load_video(tmp_path)
    assert video.fps is None and [f.getpixel((0, 0))[0] for f in video.frames] == [0, 30, 60]
    array = np.stack([np.asarray(f) for f in _frames(4)])
    assert len(load_video(array)) == 4 and len(load_video(torch.from_numpy(array))) == 4
    assert load_video(Video(_frames(2), fps=3.0)).fps == 3.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no frames"):
        load_video(tmp_path / "empty")


def test_limits_name_themselves_and_stop_reading_early(monkeypatch):
    raw = _encoded("GIF", n=8)
    with pytest.raises(InputError, match="more than 5 frames, over the limit --max-video-frames=5"):
        load_video(raw, max_frames=5, names={"max_frames": "--max-video-frames"})
    decoded = []
    monkeypatch.setattr(video_file, "load_image", lambda img, **kw: decoded.append(1) or load_image(img, **kw))
    with pytest.raises(InputError):
        load_video(raw, max_frames=5)
    assert len(decoded) == 5             # the sixth frame is found over the limit before it is decoded
    monkeypatch.undo()
    with pytest.raises(InputError, match="over the limit max_total_pixels=1,000"):
        load_video(raw, max_total_pixels=1000)
    with pytest.raises(InputError, match="max_frame_pixels=100"):
        load_video(raw, max_frame_pixels=100)
    with pytest.raises(InputError, match="more than 3 frames"):
        load_video(_frames(4), max_frames=3)
    with pytest.raises(InputError, match="more than 3 frames"):      # a list of paths: counted before any is read
        load_video([f"/no/such/frame_{i}.png" for i in range(4)], max_frames=3)


def test_unreadable_sources_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="FFmpeg"):
        load_video(tmp_path / "clip.mp4")
    with pytest.raises(InputError, match="not a video Pillow can read"):
        load_video(b"\0\0\0\x18ftypmp42" + bytes(64))
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_video(_encoded("GIF")[:200])
    with pytest.raises(InputError, match="different sizes"):
        load_video([_frames(1)[0], _frames(1, size=(10, 10))[0]])
    with pytest.raises(InputError, match="expected a video file"):
        load_video(3.5)


def test_video_parts_only_where_a_video_processor_reads_them():
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "which way?"}]}]
    assert normalize(conv, videos=True)[0]["content"][0] == {"type": "video"}
    with pytest.raises(InputError, match="video parts are read by a video model's processor"):
        normalize(conv)


class _MRopeCache(StaticKVCache):
    rope_deltas = None


class _Model:
    def new_cache(self, batch, max_len):
        return _MRopeCache(1, batch, 1, max_len, 2)


def test_slot_cache_keeps_each_rows_rope_delta():
    cache = SlotKVCache.like(_Model(), slots=3, max_len=16)
    for n, delta in ((4, -7), (6, 3), (5, -1)):
        prefilled = _MRopeCache(1, 1, 1, 16, 2)
        prefilled.length, prefilled.rope_deltas = n, torch.tensor([[delta]])
        cache.insert(prefilled)
    assert cache.rope_deltas.tolist() == [[-7], [3], [-1]]
    cache.remove(0)                       # the last row moves into the freed one, with its delta
    assert cache.rope_deltas.tolist() == [[-1], [3]]
    with pytest.raises(InputError, match="decode step"):
        cache.rope_deltas = torch.zeros(2, 1)
    assert SlotKVCache.like(type("Plain", (), {"new_cache": lambda s, b, m: StaticKVCache(1, b, 1, m, 2)})(),
                            2, 8).rope_deltas is None
