"""`ocellus chat` over a unified model (chat.UnifiedChat): the sampling flags it can honour reach the drawing and
the caption, the ones it cannot are refused by name before the model loads, and a drawing option the model does
not take is a ConfigError rather than a TypeError mid-conversation."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ocellus import cli
from ocellus.chat import UnifiedChat, drawing_options
from ocellus.errors import ConfigError, InputError
from ocellus.models.unified import checkpoint


class Drawer:
    """A unified model's chat surface (Janus-like: the drawing's options spelled out), recording its calls."""
    image_size, colours = 8, ["red", "blue"]
    generate_options = {"guidance_scale": 2.0}
    text = SimpleNamespace(index={"<pad>": 0, "red": 5, "blue": 6, "circle": 7})

    def __init__(self):
        self.calls = []

    def describe(self, pixel_values, max_new_tokens=8):
        self.calls.append(("describe", max_new_tokens))
        return ["red circle"] * len(pixel_values)

    def generate_images(self, captions, guidance_scale=3.0, temperature=1.0, top_k=None, generator=None):
        self.calls.append(("draw", dict(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k)))
        return torch.rand(len(captions), 3, 8, 8, generator=generator) * 2 - 1


class Masker(Drawer):
    """Show-o-like: no top-k in its drawing; its options pass through **kw to generate_image_ids."""

    def generate_images(self, captions, **kw):
        return self.generate_image_ids(captions, **kw)

    def generate_image_ids(self, captions, steps=8, temperature=1.0, generator=None):
        return torch.zeros(len(captions), 3, 8, 8)


def test_drawing_options_follow_the_kwargs_on():
    assert drawing_options(Drawer()) == {"guidance_scale", "temperature", "top_k", "generator"}
    assert drawing_options(Masker()) == {"steps", "temperature", "generator"}


def test_flags_reach_the_drawing_and_the_caption(tmp_path):
    model = Drawer()
    chat = UnifiedChat(model, tmp_path, seed=3, caption_tokens=5, temperature=0.5, top_k=4)
    assert "drew a red circle" in "".join(chat.send("draw a red circle"))
    assert model.calls[-1] == ("draw", dict(guidance_scale=2.0, temperature=0.5, top_k=4))   # the checkpoint's own kept
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    assert "".join(chat.send("what is this?", [image])) == "red circle"
    assert model.calls[-1] == ("describe", 5)
    # the seed is the drawing's: the same seed draws the same picture, another seed another
    pictures = []
    for seed in (3, 3, 4):
        UnifiedChat(model, tmp_path / str(len(pictures)), seed=seed).send("draw blue circle").__next__()
        pictures.append(Image.open(tmp_path / str(len(pictures)) / "drawn_1.png").tobytes())
    assert pictures[0] == pictures[1] != pictures[2]


def test_an_option_the_model_does_not_take_is_refused_at_once(tmp_path):
    with pytest.raises(ConfigError, match=r"Masker draws with the options .*it has no \['top_k'\]"):
        UnifiedChat(Masker(), tmp_path, top_k=4)
    UnifiedChat(Masker(), tmp_path, temperature=0.7)        # one it takes
    with pytest.raises(ConfigError, match="caption's length"):
        UnifiedChat(Drawer(), tmp_path, caption_tokens=0)


def test_a_large_image_is_refused_at_the_chats_limit(tmp_path):
    chat = UnifiedChat(Drawer(), tmp_path, max_pixels=50)
    big = tmp_path / "big.png"
    Image.new("RGB", (10, 10)).save(big)
    with pytest.raises(InputError, match="pixels"):
        chat.load_image(str(big))


@pytest.fixture
def unified_cli(monkeypatch, tmp_path):
    """cli.main over a fake unified checkpoint: -> the session chat_loop was given (None before it loads)."""
    got = {}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint, "is_unified_dir", lambda path: True)
    monkeypatch.setattr(checkpoint, "load_unified", lambda path: got.setdefault("model", Drawer()))
    monkeypatch.setattr(cli, "chat_loop", lambda session, images=(), videos=(): got.setdefault("session", session) and 0)
    return got


def test_ocellus_chat_passes_seed_temperature_top_k_and_length(unified_cli):
    assert cli.main(["chat", "--model", "m", "--seed", "7", "--temperature", "0.8", "--top-k", "3",
                     "--max-new-tokens", "6"]) == 0
    session = unified_cli["session"]
    assert session.generate == dict(guidance_scale=2.0, temperature=0.8, top_k=3) and session.caption == {
        "max_new_tokens": 6}
    assert torch.equal(session.generator.get_state(), torch.Generator().manual_seed(7).get_state())
    unified_cli.clear()
    assert cli.main(["chat", "--model", "m"]) == 0           # no flags: the checkpoint's drawing, its caption length
    assert unified_cli["session"].generate == dict(guidance_scale=2.0) and unified_cli["session"].caption == {}


@pytest.mark.parametrize("flags, named", [(["--top-p", "0.9"], "--top-p"), (["--min-p", "0.1"], "--min-p"),
                                          (["--repetition-penalty", "1.2"], "--repetition-penalty"),
                                          (["--stop", "###"], "--stop"), (["--system", "be brief"], "--system"),
                                          (["--video", "v.gif"], "--video"), (["--dtype", "bfloat16"], "--dtype"),
                                          (["--quantize", "int8"], "--quantize"), (["--no-prepack"], "--no-prepack"),
                                          (["--num-beams", "2"], "--num-beams 2")])
def test_ocellus_chat_refuses_what_a_unified_model_cannot_honour(unified_cli, capsys, flags, named):
    assert cli.main(["chat", "--model", "m", *flags]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and named in err and "unified model" in err
    assert unified_cli == {}                                  # refused before the model loaded
