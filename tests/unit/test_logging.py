"""Messages go through logging, output stays on stdout: the library emits on the `ocellus` loggers and configures
no handler; the CLI (configure_logging, the one place) shows them on stderr at --log-level / -v / -q /
$OCELLUS_LOG_LEVEL, info by default."""
from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from PIL import Image

import ocellus
from ocellus.cli import main
from ocellus.train.loader import BatchLoader
from ocellus.train.trainer import TrainConfig, Trainer
from tests.unit.test_trainer import collate, counting_data, tiny_decoder

ROOT = Path(__file__).resolve().parents[2] / "ocellus"
WROTE = "patch grid"          # explain's message: "wrote OUT: attention of N answer tokens over the RxC patch grid"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


def explain(image: Path, out: Path, *flags: str, after: tuple[str, ...] = ()) -> int:
    return main([*flags, "explain", "--model", str(ocellus.default_model_dir()), "--image", str(image), "--out",
                 str(out), "--max-new-tokens", "2", *after, "What colour is the shape?"])


def test_cli_level_flag_filters_messages_and_keeps_the_output(image, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OCELLUS_LOG_LEVEL", raising=False)
    assert explain(image, tmp_path / "a.png") == 0                  # default info: the message, on stderr
    default = capsys.readouterr()
    assert WROTE in default.err and WROTE not in default.out and default.out.strip()   # the answer: stdout
    for flags, after in ((("-q",), ()), ((), ("--log-level", "warning")), (("--log-level", "error"), ())):
        assert explain(image, tmp_path / "b.png", *flags, after=after) == 0
        quiet = capsys.readouterr()
        assert WROTE not in quiet.err and quiet.out == default.out, (flags, after)
    monkeypatch.setenv("OCELLUS_LOG_LEVEL", "warning")
    assert explain(image, tmp_path / "c.png") == 0
    assert WROTE not in capsys.readouterr().err
    assert explain(image, tmp_path / "d.png", "-v") == 0           # the flag beats the environment
    assert WROTE in capsys.readouterr().err
    monkeypatch.setenv("OCELLUS_LOG_LEVEL", "loud")
    assert explain(image, tmp_path / "e.png") == 2
    assert "OCELLUS_LOG_LEVEL must be one of debug, info, warning, error, critical, got 'loud'" in \
        capsys.readouterr().err


def test_cli_leaves_no_handler_behind(image, tmp_path, capsys):
    assert explain(image, tmp_path / "a.png", "-q") == 0
    logger = logging.getLogger("ocellus")
    assert not logger.handlers and logger.level == logging.NOTSET


def test_library_warns_through_the_ocellus_logger_not_stdout(tmp_path, caplog, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')   # an earlier run's log
    cfg = TrainConfig(max_steps=2, out_dir=str(tmp_path), progress=False)
    with caplog.at_level(logging.INFO, logger="ocellus"):
        Trainer(tiny_decoder(), BatchLoader(counting_data(), 8, collate), cfg).fit()
    [record] = [r for r in caplog.records if "earlier run" in r.getMessage()]
    assert record.name == "ocellus.train.trainer" and record.levelno == logging.WARNING
    assert "starting clean" in record.getMessage()
    assert capsys.readouterr().out == ""
    assert not logging.getLogger("ocellus").handlers      # the library configured no handler


def test_only_the_cli_configures_logging_and_nothing_prints_messages():
    """No module but cli.py adds a handler or calls basicConfig; print is left to the modules whose stdout is a
    command's output (the answer, a table), each listed here."""
    output_modules = {"cli.py", "bench.py", "bench_serve.py", "eval/decoding.py", "compare.py", "train/compare.py",
                      "eval/compare.py", "train/capfilt.py"}
    configures, prints = [], []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("basicConfig", "addHandler", "dictConfig", "fileConfig") and rel != "cli.py":
                configures.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" \
                    and rel not in output_modules:
                prints.append(f"{rel}:{node.lineno}")
    assert not configures, f"only ocellus/cli.py configures logging: {configures}"
    assert not prints, f"messages go through logging.getLogger(__name__): {prints}"
