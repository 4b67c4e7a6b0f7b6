"""Two CPU processes (gloo) under torchrun give the loss of one process with the same global
batch, under DDP and FSDP2, and a run interrupted under both resumes to the same losses."""
import json
from pathlib import Path

import pytest
from _launch import launch

SCRIPT = Path(__file__).with_name("tiny_run.py")


def _run(tmp, name, strategy, nproc, resume=False, crash_at=0):
    out = tmp / name
    proc, log = launch(SCRIPT, [strategy, "8", str(out)] + (["--resume"] if resume else []), nproc,
                       env={"CRASH_AT": str(crash_at)})
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
