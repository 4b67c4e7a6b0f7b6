"""Runs a test script alone or under torchrun on CPU (gloo), for the multi-process tests.

Two failures of the launcher, not of the code under test, get one retry: the free port taken by
another process between choosing it and torchrun's bind, and gloo's teardown race, where a rank
aborts with "terminate called without an active exception" (SIGABRT) while its threads shut down.
Anything else fails at once, with the full output in the message."""
import os
import socket
import subprocess
import sys

LAUNCHER_FAILURES = ("address already in use", "terminate called without an active exception")


def free_port() -> int:
    """A port nobody listens on now: a fixed one can still be held by the previous run's sockets."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, args: list[str], nproc: int, env: dict | None = None, timeout: int = 240):
    """-> (CompletedProcess, a log of its exit code, stdout and stderr tails for assertion messages)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for attempt in range(2):
        cmd = [sys.executable, str(script)] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), str(script)]
        proc = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0 or not any(m in proc.stderr.lower() for m in LAUNCHER_FAILURES):
            break
    log = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc, log
