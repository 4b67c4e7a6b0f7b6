"""Progress of a loop (training steps, evaluated samples): a tqdm bar on a terminal, plain lines elsewhere.

A bar redraws itself with carriage returns: right on a terminal, and garbage in a CI log, a `| tee` file or
nohup.out (one long line of partial redraws, or thousands of them). So when the stream is not a TTY, Progress
writes one plain line every `every` steps or every `seconds` seconds, whichever comes first, and one at the
last step:

    train step 30/100 (30%) loss 1.2345 lr 1.00e-03 2.50 step/s ETA 0:00:28

    with Progress(total=100, desc="train", every=10) as p:
        for step in range(100):
            ...
            p.update(loss=f"{loss:.4f}")    # shown beside the bar / on each line

The rate is steps done in this process over its seconds (a resumed run starts at `initial` and does not count
the steps it skipped), the ETA the steps left at that rate. The stream is stderr by default: stdout is a
command's output. Progress is an info message: with the `ocellus` logger's own level set above info (`ocellus -q`,
`--log-level warning`) it shows nothing; a library caller who configured no logging sees it. It lives in viz (terminal drawing, below eval and train, which both report progress).
"""
from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Callable, TextIO

from tqdm.std import tqdm

from ocellus.errors import positive_int


class Progress:
    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "step", every: int = 10,
                 seconds: float = 30.0, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        positive_int(total, "progress total")
        positive_int(every, "progress every (steps between lines)")
        positive_int(seconds, "progress seconds (between lines)", number=True)
        self.total, self.n, self.desc, self.unit, self.every, self.seconds = total, initial, desc, unit, every, seconds
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.start_n, self.start_t = initial, clock()
        self.last_n, self.last_t = initial, self.start_t     # the last plain line written
        self.quiet = logging.getLogger("ocellus").level > logging.INFO
        self.bar = (tqdm(total=total, initial=initial, desc=desc or None, unit=unit, dynamic_ncols=True,
                         file=self.stream) if is_tty(self.stream) and not self.quiet else None)

    def update(self, n: int = 1, **shown) -> None:
        """n more steps done; shown: name -> value (formatted by the caller) beside the bar / on the line."""
        self.n += n
        if self.quiet:
            return
        if self.bar is not None:
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            self.bar.update(n)
            return
        now = self.clock()
        if self.n - self.last_n >= self.every or now - self.last_t >= self.seconds or self.n >= self.total:
            self.stream.write(self.line(now, shown) + "\n")
            self.stream.flush()
            self.last_n, self.last_t = self.n, now

    def line(self, now: float, shown: dict) -> str:
        """The plain line at `now`: desc, step n/total (percent), the shown numbers, rate and ETA."""
        parts = [self.desc] if self.desc else []
        parts.append(f"{self.unit} {self.n}/{self.total} ({100 * self.n // self.total}%)")
        parts += [f"{k} {v}" for k, v in shown.items()]
        elapsed, done = now - self.start_t, self.n - self.start_n
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            eta = datetime.timedelta(seconds=round(max(0, self.total - self.n) / rate))
            parts.append(f"{rate:.2f} {self.unit}/s ETA {eta}")
        return " ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_tty(stream) -> bool:
    """A terminal (a closed or fake stream without isatty is not one)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

