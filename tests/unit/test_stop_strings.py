"""Stop strings end a reply everywhere, one implementation (infer/stop_text.py): `stream`, `ChatSession` (and
`ocellus chat`), `ocellus generate`; the server's engine uses the same class (tests/serve/test_template_stops.py).
A scripted model writes a known continuation (MiniGPT-4's " red###Human: ..."): the text shown ends before
"###", decoding stops there, and a "#" / "##" that turns out not to begin "###" is shown once that is known,
or at the end."""
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

import ocellus
from ocellus import cli
from ocellus.chat import ChatSession
from ocellus.data.image import image_config
from ocellus.data.processor import Processor
from ocellus.data.tokenizer import Tokenizer
from ocellus.infer.generate import stream
from ocellus.infer.stop_text import StopText, cut_at_stop, reply_stops

TEMPLATE = ("{% for m in messages %}###{{ m['role'] }}: {% for p in m['content'] %}{% if p['type'] == 'text' %}"
            "{{ p['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}###assistant:{% endif %}")


@pytest.fixture(scope="module")
def tok():
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["a red circle###Human: and a blue square ## # b"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<image>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return Tokenizer(raw, special_tokens={"eos_token": "</s>", "pad_token": "<pad>"}, extra_special_tokens=["<image>"],
                     chat_templates={"default": TEMPLATE})


class Scripted(torch.nn.Module):
    """Writes `script` greedily, one token a step (step s's logits peak at script[s]); counts its forwards."""

    def __init__(self, script, vocab: int):
        super().__init__()
        self.script, self.vocab, self.calls = list(script), vocab, 0
        self.config = SimpleNamespace(eos_token_id=None, pad_token_id=0)
        self.max_context = 512
        self.anchor = torch.nn.Parameter(torch.zeros(1))    # the device ChatSession reads

    def new_cache(self, batch, max_len):
        return SimpleNamespace(reorder=lambda rows: None)   # beam search reorders it; nothing is cached

    def forward(self, input_ids, cache=None, logits_to_keep=1, **inputs):
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, 0, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
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
