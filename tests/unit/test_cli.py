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


def test_demo_answers_next_to_the_truth_and_writes_a_heat_map(tmp_path, capsys):
    from PIL import Image
    assert main(["demo", "--out", str(tmp_path / "d"), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "truth" in out and "accuracy:" in out and "attention peaks at patch" in out
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["attention.png", "image_0.png", "image_1.png"]
    assert Image.open(tmp_path / "d" / "attention.png").size == Image.open(tmp_path / "d" / "image_0.png").size


def test_generate_greedy_is_deterministic_and_beam_runs(tiny, capsys):
    args = ["generate", "--model", str(tiny), "--max-new-tokens", "6", "hello there"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main(args + ["--num-beams", "3"]) == 0
    assert main(args + ["--temperature", "0.9", "--top-p", "0.9", "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(args + ["--no-prepack"]) == 0        # plain weights (the default packs them): the same greedy text
    assert capsys.readouterr().out == first


def test_generate_reports_typed_errors(tiny, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "absent"), "hi"]) == 2
    assert "CheckpointError" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny), "--max-new-tokens", "5000", "hi"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


def test_generate_beams_go_through_the_models_own_generate(tiny, monkeypatch, capsys):
    """`ocellus generate --num-beams N` asks the model itself, so a model that cannot beam-search its prompt
    (Qwen2-VL's packed patches, Flamingo's several images in a row) refuses instead of decoding nonsense."""
    import ocellus
    from ocellus.errors import ConfigError
    real = ocellus.load

    def load(*args, **kw):
        model = real(*args, **kw)

        def refuse(*a, **k):
            raise ConfigError(f"beam search is not implemented for this model (num_beams={k.get('num_beams')})")
        model.generate = refuse
        return model
    monkeypatch.setattr(ocellus, "load", load)
    args = ["generate", "--model", str(tiny), "--max-new-tokens", "4", "hello there"]
    assert main(args + ["--num-beams", "2"]) == 2
    assert "num_beams=2" in capsys.readouterr().err
    assert main(args) == 0                                     # greedy streams through the engine as before
