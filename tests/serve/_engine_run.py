"""Running a BatchEngine with requests that arrive at an exact step: a forward pre-hook on the model (it runs on
the engine thread before every forward, prefill or decode) logs what the engine does and submits the later
requests, so the arrivals are counted in steps, not timed."""
from __future__ import annotations

import threading


def run_with_hook(engine, model, before_forward, first, done: threading.Event, timeout: float = 60) -> None:
    """Start `engine` with `before_forward(module, args, kwargs)` hooked on `model`, submit the request `first`,
    wait until `done` is set (failing after `timeout` seconds), then stop the engine and remove the hook."""
    hook = model.register_forward_pre_hook(before_forward, with_kwargs=True)
    engine.start()
    try:
        engine.submit(first)
        assert done.wait(timeout), f"the engine did not finish within {timeout} s"
    finally:
        engine.stop()
        hook.remove()
