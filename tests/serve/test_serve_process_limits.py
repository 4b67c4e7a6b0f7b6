"""The test server's process wrapper (ocellus/serve/process.py) and the limits' own checks (ocellus/serve/limits.py):
a server that dies or never answers is reported and leaves no child behind, its RSS is read in bytes, and each
limit refuses a value that would disable it, by name, before the server starts."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ocellus.errors import ConfigError
from ocellus.serve import media, process
from ocellus.serve.limits import API_KEY_ENV, ServeLimits
from ocellus.serve.process import ServerProcess
from tests.serve.conftest import shape_image


def test_a_server_that_dies_at_startup_is_reported_with_its_output(tmp_path):
    """A server that exits while starting is an error naming its exit code and carrying its log (here: the
    missing model), not a silent wait on /health until the startup timeout."""
    with pytest.raises(RuntimeError, match=r"exited with code [1-9]") as e:
        ServerProcess("--model", str(tmp_path / "no-such-model"), startup_timeout=90, env={"OMP_NUM_THREADS": "1"})
    assert "no-such-model" in str(e.value)


def test_a_startup_timeout_stops_the_child(monkeypatch):
    """A server that does not answer /health in time is terminated before the error is raised (no orphan)."""
    started, real_popen = [], subprocess.Popen

    def popen(*args, **kw):
        started.append(real_popen(*args, **kw))
        return started[-1]
    monkeypatch.setattr(process.subprocess, "Popen", popen)
    try:
        with pytest.raises(RuntimeError, match="did not answer /health within 0 s"):
            ServerProcess(startup_timeout=0.0, env={"OMP_NUM_THREADS": "1"})
        assert len(started) == 1 and started[0].poll() is not None
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_leaving_the_with_block_stops_the_server():
    """`with ServerProcess(...)` ends the child process on exit (here a stand-in child: only stop() is tested)."""
    srv = ServerProcess.__new__(ServerProcess)
    srv.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    srv.log = tempfile.NamedTemporaryFile("w+")
    try:
        with srv:
            assert srv.proc.poll() is None
        assert srv.proc.poll() is not None and srv.log.closed
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux /proc")
def test_rss_bytes_reads_vmrss_in_kib():
    """rss_bytes is /proc's VmRSS in bytes (its "kB" are KiB): the resident pages of statm times the page size,
    read just before and after (a few pages of slack for what the read itself allocates)."""
    page = os.sysconf("SC_PAGE_SIZE")

    def resident() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * page
    lo = resident()
    got = ServerProcess.rss_bytes(SimpleNamespace(proc=SimpleNamespace(pid=os.getpid())))
    hi = resident()
    assert min(lo, hi) - 64 * page <= got <= max(lo, hi) + 64 * page, (lo, got, hi)


INT_LIMITS = ("max_request_bytes", "max_images", "max_image_pixels", "max_request_pixels", "max_videos",
              "max_video_frames", "max_video_pixels", "max_video_bytes", "prompt_bytes_per_token",
              "preprocess_concurrency", "max_tokens", "max_n", "max_queue", "slots", "http_max_bytes")


@pytest.mark.parametrize("name", INT_LIMITS)
def test_each_int_limit_refuses_zero_and_floats(name):
    """0 (or a float) for a count / size limit is a ConfigError naming the limit: 0 would refuse every request
    or, for slots / max_queue, hang the server; 1 is the smallest limit accepted."""
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match=f"serve limit {name} must be an int >= 1, got {bad!r}"):
            ServeLimits(**{name: bad})
    assert getattr(ServeLimits(**{name: 1}), name) == 1


@pytest.mark.parametrize("name", ["request_timeout_s", "http_timeout_s", "idle_timeout_s"])
def test_timeouts_must_be_positive(name):
    """A timeout of 0, below 0 or NaN is refused by name (0 would time out every request; NaN compares False)."""
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match=f"serve limit {name} must be > 0"):
            ServeLimits(**{name: bad})
    assert getattr(ServeLimits(**{name: 0.5}), name) == 0.5


def test_api_key_empty_or_blank(monkeypatch):
    """A blank --api-key is refused (no client could send it); an empty $OCELLUS_API_KEY means no key, as unset."""
    for blank in ("", "   ", "\t\n"):
        with pytest.raises(ConfigError, match="the API key is empty"):
            ServeLimits(api_key=blank)
    monkeypatch.setenv(API_KEY_ENV, "")
    assert ServeLimits.key_from_env(None) is None
    assert ServeLimits(api_key=ServeLimits.key_from_env(None)).api_key is None


def test_allowed_image_dir_relative_or_symlinked_serves_its_files(tmp_path, monkeypatch):
    """--allow-image-dir given as a relative path or through a symlink still serves the files inside it (file://
    paths are resolved, so the directory must be too); a file is not a directory."""
    real = tmp_path / "real"
    real.mkdir()
    shape_image().save(real / "a.png")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for given in (Path("real"), tmp_path / "link"):
        limits = ServeLimits(allowed_image_dir=given)
        for url in ((real / "a.png").as_uri(), (tmp_path / "link" / "a.png").as_uri()):
            assert media.fetch_image(url, "img", limits).size == (48, 48)
    with pytest.raises(ConfigError, match="is not a directory"):
        ServeLimits(allowed_image_dir=real / "a.png")
