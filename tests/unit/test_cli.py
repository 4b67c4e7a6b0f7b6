"""The command line runs end to end: demo, generate (greedy, sampled, beams), and errors are
reported as one line, not a traceback."""
import pytest

from ocellus.cli import main
from ocellus.demo import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def test_help_and_version(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["--version"]) == 0


def test_demo_streams_a_reply(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "d"), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "reply:" in out and "<|im_start|>assistant" in out


def test_generate_greedy_is_deterministic_and_beam_runs(tiny, capsys):
    args = ["generate", "--model", str(tiny), "--max-new-tokens", "6", "hello there"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main(args + ["--num-beams", "3"]) == 0
    assert main(args + ["--temperature", "0.9", "--top-p", "0.9", "--seed", "3"]) == 0


def test_generate_reports_typed_errors(tiny, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "absent"), "hi"]) == 2
    assert "CheckpointError" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny), "--max-new-tokens", "5000", "hi"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err
