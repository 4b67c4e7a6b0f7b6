"""The serve limits' defaults (ocellus/serve/limits.py) are the ones docs/SERVING.md's "Limits and security" table
promises, both for a library caller (`create_app(..., limits=None)` takes ServeLimits()) and for `ocellus serve`
with no flags. The numbers are written out here from the table, not read from the code: a default changed in one
place only (the dataclass, the CLI or the page) goes red."""
import pytest

from ocellus import cli
from ocellus.errors import ConfigError
from ocellus.serve.limits import ServeLimits

MiB = 2**20
DOCUMENTED = {   # docs/SERVING.md, "Limits and security"
    "api_key": None, "max_request_bytes": 20 * MiB, "max_images": 8, "max_image_pixels": 4096 * 4096,
    "max_request_pixels": 4096 * 4096, "max_videos": 2, "max_video_frames": 64, "max_video_pixels": 64 * 640 * 480,
    "max_video_bytes": 8 * MiB, "prompt_bytes_per_token": 8, "preprocess_concurrency": 2, "max_tokens": 1024,
    "max_n": 4, "request_timeout_s": 120.0, "max_queue": 64, "slots": 16, "max_context": None, "prefill_chunk": 256,
    "allowed_hosts": (), "idle_timeout_s": 5.0,
    # SERVING.md's "Images" section: http(s) image URLs only with --allow-http-images, read with a 10 s timeout
    # and a byte cap; file:// URLs only under --allow-image-dir
    "allow_http_images": False, "http_timeout_s": 10.0, "http_max_bytes": 10 * MiB, "allowed_image_dir": None,
}


def test_the_library_defaults_are_the_documented_ones():
    limits = ServeLimits()
    assert {name: getattr(limits, name) for name in DOCUMENTED} == DOCUMENTED


def test_ocellus_serve_without_flags_serves_the_documented_limits(monkeypatch):
    import ocellus.serve.app as app
    seen = {}
    monkeypatch.setattr(app, "serve", lambda model, **kw: seen.update(kw))
    monkeypatch.delenv("OCELLUS_API_KEY", raising=False)
    assert cli.main(["serve", "--model", "m"]) == 0
    limits = seen["limits"]
    assert {name: getattr(limits, name) for name in DOCUMENTED} == DOCUMENTED


@pytest.mark.parametrize("bad", [0, -256, 2.5])
def test_prefill_chunk_must_be_a_positive_int_or_none(bad):
    # 0 would never finish a prompt; None (the CLI's --prefill-chunk 0) prefills each prompt whole
    with pytest.raises(ConfigError, match="serve limit prefill_chunk must be a positive int"):
        ServeLimits(prefill_chunk=bad)
    assert ServeLimits(prefill_chunk=None).prefill_chunk is None
