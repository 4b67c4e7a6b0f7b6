"""Runs a test script alone or under torchrun on CPU (gloo), for the multi-process tests.

Two failures of the launcher, not of the code under test, get one retry: the free port taken by
another process between choosing it and torchrun's bind, and gloo's teardown race, where a rank
aborts with "terminate called without an active exception" (SIGABRT) while its threads shut down.
Anything else fails at once, with the full output in the message.

The time limit is in uncontended seconds, not wall seconds. A 2-process run with loader workers is seven
processes (torchrun, two ranks, four DataLoader workers); on a machine loaded by other test runs it gets a
fraction of a core each, and its wall time grows with the load (13 s alone here, 165 s at load 12 on 2 cores),
while the work it has to do does not. A fixed wall-clock limit made it fail under load although nothing hung.
So each second waited counts as the share of a core the machine could give (cores / load average, at most 1):
a hang still ends after `timeout` seconds on an idle machine, and a slow run on a busy one is not cut off for
being slow (`max_wall` bounds even that). On the limit the whole process group is killed: killing torchrun alone
left its ranks behind, orphaned, holding memory and retrying the vanished store for minutes. The output goes to
files, not pipes: a pipe nobody reads while waiting could fill and block a rank."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

LAUNCHER_FAILURES = ("address already in use", "terminate called without an active exception")


def free_port() -> int:
    """A port nobody listens on now: a fixed one can still be held by the previous run's sockets."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uncontended_share() -> float:
    """The share of a core one runnable process gets now (1 on an idle machine)."""
    return min(1.0, (os.cpu_count() or 1) / max(os.getloadavg()[0], 1e-6))


def run_group(cmd: list[str], env: dict, timeout: float, max_wall: float) -> subprocess.CompletedProcess:
    """cmd in a process group of its own, its output in files; killed with every process it started once it
    has waited `timeout` uncontended seconds (or `max_wall` wall seconds) -> CompletedProcess, or
    subprocess.TimeoutExpired carrying the output so far."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
        waited, started = 0.0, time.monotonic()
        while proc.poll() is None:
            if waited > timeout or time.monotonic() - started > max_wall:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out.seek(0), err.seek(0)
                raise subprocess.TimeoutExpired(cmd, timeout, output=out.read(), stderr=err.read())
            t = time.monotonic()
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            waited += (time.monotonic() - t) * uncontended_share()
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


def launch(script, args: list[str], nproc: int, env: dict | None = None, timeout: float = 240,
           max_wall: float = 1800):
    """-> (CompletedProcess, a log of its exit code, stdout and stderr tails for assertion messages)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for attempt in range(2):
        cmd = [sys.executable, str(script)] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), str(script)]
        proc = run_group(cmd + list(args), env, timeout, max_wall)
        if proc.returncode == 0 or not any(m in proc.stderr.lower() for m in LAUNCHER_FAILURES):
            break
    log = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc, log
