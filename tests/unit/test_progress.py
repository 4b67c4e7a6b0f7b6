"""Progress (ocellus/viz/progress.py): a tqdm bar on a terminal; elsewhere (CI, | tee, nohup) one plain line every
N steps or T seconds and at the last step. The Trainer reports through it on stderr; metrics.jsonl is unchanged."""
from __future__ import annotations

import io
import json
import logging

import pytest

from ocellus.errors import ConfigError
from ocellus.train.loader import BatchLoader
from ocellus.train.trainer import TrainConfig, Trainer
from ocellus.viz.progress import Progress
from tests.unit.test_trainer import collate, counting_data, tiny_decoder


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """A clock the test moves by hand."""
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_not_a_terminal_writes_a_line_every_n_steps_and_at_the_last():
    out, clock = io.StringIO(), Clock()
    with Progress(25, desc="train", every=10, seconds=1e9, stream=out, clock=clock) as p:
        for step in range(25):
            clock.t += 0.5                      # 2 steps/s
            p.update(loss=f"{1 / (step + 1):.4f}")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == ["train step 10/25 (40%) loss 0.1000 2.00 step/s ETA 0:00:08",
                     "train step 20/25 (80%) loss 0.0500 2.00 step/s ETA 0:00:02",
                     "train step 25/25 (100%) loss 0.0400 2.00 step/s ETA 0:00:00"]


def test_not_a_terminal_writes_a_line_every_t_seconds():
    out, clock = io.StringIO(), Clock()
    p = Progress(23, every=1000, seconds=5, stream=out, clock=clock)
    for _ in range(23):
        clock.t += 1.0                          # 1 step/s: a line at 5, 10, 15, 20 s, and the last step
        p.update()
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["5/23", "10/23", "15/23", "20/23", "23/23"]
    assert lines[0].endswith("1.00 step/s ETA 0:00:18")


def test_resumed_run_counts_its_rate_from_where_it_started():
    out, clock = io.StringIO(), Clock()
    p = Progress(100, initial=60, every=10, stream=out, clock=clock)
    for _ in range(10):
        clock.t += 2.0
        p.update()
    assert out.getvalue() == "step 70/100 (70%) 0.50 step/s ETA 0:01:00\n"   # 10 steps in 20 s, 30 left


def test_a_terminal_gets_the_bar_not_lines():
    tty = FakeTTY()
    with Progress(25, desc="train", every=10, stream=tty) as p:
        for _ in range(25):
            p.update(loss="0.1234")
    text = tty.getvalue()
    assert "\r" in text and "25/25" in text and "100%|" in text and "loss=0.1234" in text
    assert "train step" not in text                         # no plain lines beside the bar


def test_quiet_when_the_ocellus_logger_is_set_above_info():
    logger = logging.getLogger("ocellus")
    try:
        logger.setLevel(logging.WARNING)                         # what `ocellus -q` sets
        out, tty = io.StringIO(), FakeTTY()
        for stream in (out, tty):
            with Progress(5, every=1, stream=stream) as p:
                for _ in range(5):
                    p.update()
        assert out.getvalue() == "" and tty.getvalue() == ""
        logger.setLevel(logging.INFO)                            # the CLI's default: shown
        with Progress(5, every=5, stream=out) as p:
            p.update(5)
        assert out.getvalue().startswith("step 5/5 (100%)")
    finally:
        logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize("kw", [{"every": 0}, {"seconds": 0}, {"every": 2.5}])
def test_bad_settings_are_config_errors(kw):
    with pytest.raises(ConfigError, match="progress"):
        Progress(10, stream=io.StringIO(), **kw)


def test_trainer_reports_plain_lines_on_a_non_terminal_and_keeps_metrics_jsonl(tmp_path, capsys):
    cfg = TrainConfig(max_steps=12, lr=3e-3, out_dir=str(tmp_path), log_every=5, progress_every=4)
    Trainer(tiny_decoder(), BatchLoader(counting_data(), 8, collate), cfg).fit()
    captured = capsys.readouterr()          # pytest's capture is not a terminal
    lines = [line for line in captured.err.splitlines() if line.startswith("train step")]
    assert [line.split()[2] for line in lines] == ["4/12", "8/12", "12/12"]
    assert all(" loss " in line and " lr " in line and "step/s ETA" in line for line in lines)
    assert captured.out == ""                   # stdout is a command's output, not progress
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 12]
    assert all(set(r) == {"step", "loss", "lr", "tokens_per_s"} for r in records)


def test_trainer_progress_every_defaults_to_log_every_and_is_checked(tmp_path, capsys):
    cfg = TrainConfig(max_steps=6, out_dir=str(tmp_path), log_every=3)
    Trainer(tiny_decoder(), BatchLoader(counting_data(), 8, collate), cfg).fit()
    assert [line.split()[2] for line in capsys.readouterr().err.splitlines()
            if line.startswith("train step")] == ["3/6", "6/6"]
    with pytest.raises(ConfigError, match="train.progress_every must be a positive int, got 0"):
        Trainer(tiny_decoder(), BatchLoader(counting_data(), 8, collate),
                TrainConfig(out_dir=str(tmp_path), progress_every=0))


def test_eval_reports_samples_done_as_plain_lines(capsys):
    from ocellus.eval.harness import evaluate
    from ocellus.hub.resolve import default_model_dir
    evaluate(default_model_dir(), "shapes-vqa", n=6, batch_size=2, printer=lambda *a: None, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eval sample")]
    assert [line.split()[2] for line in lines] == ["2/6", "4/6", "6/6"]      # every tenth of 6 rounds to each batch
