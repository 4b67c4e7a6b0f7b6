"""Stop strings end a reply everywhere, one implementation (infer/stop_text.py): `stream`, `ChatSession` (and
`ocellus chat`), `ocellus generate`; the server's engine uses the same class (tests/serve/test_template_stops.py).
A scripted model writes a known continuation (MiniGPT-4's " red###Human: ..."): the text shown ends before
"###", decoding stops there, and a "#" / "##" that turns out not to begin "###" is shown once that is known,
or at the end."""
import io
import sys
from types import SimpleNamespace

import pytest
import torch
from tokenizers import pre_tokenizers

import ocellus
from ocellus import cli
from ocellus.chat import ChatSession
from ocellus.data.image import image_config
from ocellus.data.processor import Processor
from ocellus.errors import ConfigError
from ocellus.infer.generate import stream
from ocellus.infer.stop_text import StopText, cut_at_stop, reply_stops

from _byte_bpe import byte_bpe_tokenizer

TEMPLATE = ("{% for m in messages %}###{{ m['role'] }}: {% for p in m['content'] %}{% if p['type'] == 'text' %}"
            "{{ p['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}###assistant:{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return byte_bpe_tokenizer(["<pad>", "</s>", "<image>"], pre_tokenizers.ByteLevel.alphabet(),
                              extra_special_tokens=["<image>"], chat_templates={"default": TEMPLATE})


class Scripted(torch.nn.Module):
    """Writes `script` greedily, one token a step (step s's logits peak at script[s]); counts its forwards."""

    def __init__(self, script, vocab: int):
        super().__init__()
        self.script, self.vocab, self.calls = list(script), vocab, 0
        self.rows = []                                      # the batch of each forward (beam search: K rows)
        self.config = SimpleNamespace(eos_token_id=None, pad_token_id=0)
        self.max_context = 512
        self.anchor = torch.nn.Parameter(torch.zeros(1))    # the device ChatSession reads

    def new_cache(self, batch, max_len):
        return SimpleNamespace(reorder=lambda rows: None)   # beam search reorders it; nothing is cached

    def forward(self, input_ids, cache=None, logits_to_keep=1, **inputs):
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, 0, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        self.rows.append(input_ids.shape[0])
        return SimpleNamespace(logits=logits)


def _scripted(tok, text):
    return Scripted(tok.encode(text, add_special_tokens=False), len(tok)).eval()


def _stream(tok, text, stops, max_new_tokens=30):
    model = _scripted(tok, text)
    deltas = list(stream(model, tok, torch.tensor([[5, 6]]), max_new_tokens=max_new_tokens, stop_strings=stops))
    return deltas, model


def test_stream_ends_before_the_stop_string_and_decodes_no_further(tok):
    text = " red###Human: and a blue square"
    deltas, model = _stream(tok, text, ("###",))
    assert "".join(deltas) == " red"
    assert not any("#" in d for d in deltas)
    stop_token = len(tok.encode(" red###", add_special_tokens=False))
    assert model.calls <= stop_token + 1              # no forward after the token that completed "###"


def test_a_held_back_prefix_that_is_no_stop_string_is_shown_later_or_at_the_end(tok):
    text = " a # b ##"                                # "#" and a final "##" could begin "###"; neither does
    deltas, _ = _stream(tok, text, ("###",), max_new_tokens=len(tok.encode(text, add_special_tokens=False)))
    assert "".join(deltas) == text
    assert not any(d.endswith("#") for d in deltas[:-1])   # a "#" waits for what follows it
    assert deltas[-1].endswith("##")                        # the last "##" comes with the end (flush)


def test_stop_text_holds_back_releases_and_cuts():
    cut = StopText(("###", "END"))
    assert [cut.push("red #"), cut.push("# a E"), cut.push("N"), cut.push("d #"), cut.flush()] == \
           ["red ", "## a ", "", "ENd ", "#"]
    cut = StopText(("###", "END"))
    assert [cut.push("x #"), cut.push("#"), cut.push("#tail"), cut.push("more"), cut.flush()] == ["x ", "", "", "", ""]
    assert cut.stopped
    cut = StopText(("ab", "b"))                       # the earliest stop string wins
    assert cut.push("xab") == "x"
    assert [StopText().push("a#"), cut_at_stop("red###Human", ("###",)), cut_at_stop("abc", ())] == ["a#", "red", "abc"]
    assert reply_stops(SimpleNamespace(stop_strings=("###",)), "END") == ("###", "END")
    assert reply_stops(object(), ["###", "###"]) == ("###",)


@pytest.fixture(scope="module")
def minigpt4_processor(tok):
    return Processor(tok, image_config(32), patch_size=8, chat_template=TEMPLATE, stop_strings=("###",))


def test_chat_replies_end_at_the_processors_stop_string(tok, minigpt4_processor):
    session = ChatSession(_scripted(tok, " red###Human: and more"), minigpt4_processor, max_new_tokens=20)
    assert "".join(session.send("Colour?")) == " red"
    assert session.messages[-1]["content"][0]["text"] == "red"
    user = ChatSession(_scripted(tok, " red circle###"), minigpt4_processor, max_new_tokens=20, stop_strings="circle")
    assert "".join(user.send("Colour?")) == " red "     # the user's stop strings apply with the template's


@pytest.mark.parametrize("beams", [1, 2])
def test_ocellus_generate_prints_the_reply_before_the_stop_string(tok, minigpt4_processor, monkeypatch, capsys, beams):
    monkeypatch.setattr(cli, "_load_model", lambda path, args: _scripted(tok, " red###Human: and more"))
    monkeypatch.setattr(ocellus, "load_processor", lambda path: minigpt4_processor)
    assert cli.main(["generate", "--model", "m", "--num-beams", str(beams), "--max-new-tokens", "12", "Colour?"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == " red"


# -- generate and the stream: one matcher (infer/stop_text.StopTokens) -----------------------------------------
SMILES = "\U0001F642" * 3     # 12 bytes, 12 byte-level tokens here: more tokens than the stop string has characters


@pytest.mark.parametrize("text,stop", [
    (" red###Human: and more", "###"),    # one whole token
    (" red circle###", "ed c"),           # begins inside " red", ends inside " circle"
    (" a # b ## more", "# b #"),          # over three tokens, inside the first and the last
    (f" red{SMILES} and", SMILES),         # over 12 tokens, each half a character
], ids=["token", "inside-tokens", "across-tokens", "byte-tokens"])
def test_generate_and_the_stream_end_a_reply_at_the_same_token(tok, text, stop):
    """generate keeps the token that completes the stop string (transformers' contract) and no more; the stream
    shows the text before it; both decode up to that token and no further."""
    from ocellus.infer.generate import generate
    script = tok.encode(text, add_special_tokens=False)
    ends = next(n for n in range(1, len(script) + 1) if stop in tok.decode(script[:n]))   # the completing token
    model = _scripted(tok, text)
    out = generate(model, torch.tensor([[5, 6]]), tokenizer=tok, stop_strings=(stop,), max_new_tokens=len(script))
    assert out[0, 2:].tolist() == script[:ends]
    deltas, streamed = _stream(tok, text, (stop,), max_new_tokens=len(script))
    assert "".join(deltas) == cut_at_stop(text, (stop,)) and streamed.calls == model.calls == ends


class ScriptedRows(Scripted):
    """Writes scripts[b] in row b (padded ones stay on their last token)."""

    def __init__(self, scripts, vocab: int):
        super().__init__(scripts[0], vocab)
        self.scripts = scripts

    def forward(self, input_ids, cache=None, logits_to_keep=1, **inputs):
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        for b, script in enumerate(self.scripts):
            logits[b, 0, script[min(self.calls, len(script) - 1)]] = 1.0
        self.calls += 1
        return SimpleNamespace(logits=logits)


def test_generate_ends_each_row_at_its_own_stop_string(tok):
    """A batch: each row ends at the token completing its stop string, then pads (pad_token_id 0); a row with none
    runs to max_new_tokens."""
    from ocellus.infer.generate import generate
    texts = [" red###Human: and", f" a{SMILES} b ## more", " blue square and a"]
    scripts = [tok.encode(t, add_special_tokens=False) for t in texts]
    model = ScriptedRows(scripts, len(tok)).eval()
    n = 15
    out = generate(model, torch.tensor([[5, 6]] * 3), tokenizer=tok, stop_strings=("###", SMILES), max_new_tokens=n)
    assert out[0, 2:].tolist() == scripts[0][:2] + [0] * (n - 2)
    ends = len(tok.encode(f" a{SMILES}", add_special_tokens=False))
    assert ends <= n and out[1, 2:].tolist() == scripts[1][:ends] + [0] * (n - ends)
    assert out[2, 2:].tolist() == [scripts[2][min(s, len(scripts[2]) - 1)] for s in range(n)]


# -- ocellus chat --num-beams: beam search per reply, not a flag silently dropped -----------------------------
@pytest.mark.parametrize("beams", [1, 2])
def test_ocellus_chat_searches_the_beams_it_is_given(tok, minigpt4_processor, monkeypatch, capsys, beams):
    """Each reply is beam search's over --num-beams rows (the model's batch), cut at the processor's "###" as
    generate cuts it; ChatSession(num_beams=...) likewise, its history the reply."""
    model = _scripted(tok, " red###Human: and more")
    monkeypatch.setattr(cli, "_load_model", lambda path, args: model)
    monkeypatch.setattr(ocellus, "load_processor", lambda path: minigpt4_processor)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Colour?\n"))
    assert cli.main(["chat", "--model", "m", "--num-beams", str(beams), "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() == "red" and set(model.rows) == {beams}
    session = ChatSession(_scripted(tok, " red###Human: and more"), minigpt4_processor, max_new_tokens=12,
                          num_beams=beams)
    assert "".join(session.send("Colour?")) == " red" and session.messages[-1]["content"][0]["text"] == "red"


class NoBeams(Scripted):
    """A model whose own generate refuses beams (Qwen2-VL's check_generate does, for its packed patches)."""

    def generate(self, input_ids, attention_mask=None, **kwargs):
        raise ConfigError("beam search is not implemented for this model")


def test_chat_beams_go_through_the_models_own_generate(tok, minigpt4_processor):
    """Beams through infer.generate directly would skip the model's refusal and search prompts it cannot repeat."""
    session = ChatSession(NoBeams(tok.encode(" red###", add_special_tokens=False), len(tok)).eval(),
                          minigpt4_processor, max_new_tokens=12, num_beams=2)
    with pytest.raises(ConfigError, match="not implemented for this model"):
        "".join(session.send("Colour?"))
    assert session.messages == []


def test_ocellus_chat_refuses_beams_for_a_unified_model(monkeypatch, capsys):
    """A unified model's chat captions and draws with its own decoding: --num-beams is refused, naming why."""
    from ocellus.models.unified import checkpoint
    monkeypatch.setattr(checkpoint, "is_unified_dir", lambda path: True)
    monkeypatch.setattr(checkpoint, "load_unified", lambda path: pytest.fail("loaded before the refusal"))
    assert cli.main(["chat", "--model", "m", "--num-beams", "3"]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "--num-beams 3" in err and "unified model" in err
