"""The multi-process tests' launcher (_launch.py) itself: a run that outlives its time limit is killed together
with the processes it started (a torchrun's ranks, their loader workers), and the output it wrote so far comes
with the error; a run that finishes hands back its exit code and output."""
import subprocess
import sys
import textwrap

import pytest
from _launch import launch


def test_a_hung_run_is_killed_with_its_children(tmp_path):
    script, pid_file = tmp_path / "hang.py", tmp_path / "child.pid"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(600)
    """))
    with pytest.raises(subprocess.TimeoutExpired) as e:
        launch(script, [], 1, timeout=1)
    assert e.value.output == "started\n"
    child = int(pid_file.read_text())
    # the child is gone (or a zombie about to be reaped by init): no orphan left running
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True, text=True).stdout.strip()
    assert state in ("", "Z"), state


def test_a_finished_run_returns_its_code_and_output(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n")
    proc, log = launch(script, [], 1)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n") and "exit 3" in log
    assert sys.executable in proc.args
