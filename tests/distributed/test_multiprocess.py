"""Two CPU processes (gloo) under torchrun give the loss of one process with the same global
batch, under DDP and FSDP2, and a run interrupted under both resumes to the same losses."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("tiny_run.py")


def _free_port() -> int:
    """A port nobody listens on now: a fixed one can still be held by the previous run's sockets."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp, name, strategy, nproc, resume=False, crash_at=0):
    out = tmp / name
    env = {**os.environ, "CRASH_AT": str(crash_at), "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        if nproc == 1:
            cmd = [sys.executable, str(SCRIPT)]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_port", str(_free_port()), str(SCRIPT)]
        cmd += [strategy, "8", str(out)] + (["--resume"] if resume else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        # the free port can be taken by another process between _free_port() and torchrun's bind
        if "address already in use" not in proc.stderr.lower():
            break
    log = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    if crash_at:
        assert proc.returncode != 0 and "CRASH_AT" in proc.stderr + proc.stdout, log
        return None
    assert proc.returncode == 0, log
    return json.loads((out / "history.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("single"), "one", "none", 1)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_and_resume(strategy, single, tmp_path):
    two = _run(tmp_path, "two", strategy, 2)
    assert two == pytest.approx(single, rel=1e-5, abs=1e-6)
    _run(tmp_path, "crash", strategy, 2, crash_at=5)            # checkpoint at step 3, dies in step 5
    resumed = _run(tmp_path, "crash", strategy, 2, resume=True)
    assert resumed == pytest.approx(two, rel=1e-6, abs=1e-7)
