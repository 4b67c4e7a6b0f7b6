"""train_bpe: a byte-level BPE fitted to the shapes data, whose special and grounding tokens are
single ids, whose ChatML template renders image parts, and which transformers reopens unchanged."""
import pytest
from transformers import AutoTokenizer

from ocellus.data.bpe import SPECIAL_TOKENS, train_bpe
from ocellus.data.encode import encode_messages
from ocellus.data.shapes import ShapesConfig, samples
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError

GROUNDING = "<ref>red circle</ref><box>(125,730),(406,999)</box>"
TEXTS = ["Some plain text, with ünïcödé 🙂 and\nnew lines.", GROUNDING, "<|im_start|>user\n<image>What?<|im_end|>",
         " leading space", "a  double  space", "<ref>blue star</ref><box>(0,1),(2,3)</box>\n<ref>x</ref>"]


def _corpus():
    for s in samples(ShapesConfig(seed=0), 300):
        for m in s["messages"]:
            yield "".join(p["text"] for p in m["content"] if p["type"] == "text")


@pytest.fixture(scope="module")
def tok():
    return train_bpe(_corpus(), vocab_size=400)


def test_special_tokens_are_single_special_ids(tok):
    special = {t.content for t in tok.backend.get_added_tokens_decoder().values() if t.special}
    assert set(SPECIAL_TOKENS) <= special
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.encode(token) == [i] and tok.encode(f"x{token}y")[1:-1] == [i]
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (2, 0, None)
    assert tok.special_tokens_map["image_token"] == "<image>"
    assert 300 < len(tok) <= 400  # merges were learned, within the budget


def test_grounding_round_trips_and_digits_are_split(tok):
    ids = tok.encode(GROUNDING)
    assert tok.decode(ids) == GROUNDING
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for p in pieces if p.startswith("<")] == ["<ref>", "</ref>", "<box>", "</box>"]
    assert [p for p in pieces if p.isdigit()] == list("125730406999")  # one token per digit
    assert tok.decode(ids, skip_special_tokens=True) == "red circle(125,730),(406,999)"
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_digits_never_merge_even_in_a_corpus_full_of_numbers():
    """Box coordinates repeated 200 times would merge ("125" one token) without the digit split; with it every
    number stays one token per digit. The control run without the split shows the corpus does merge them."""
    corpus = [GROUNDING, "(125,730),(406,999) 2024 125 730"] * 200
    split, merged = train_bpe(corpus, vocab_size=320), train_bpe(corpus, vocab_size=320, split_digits=False)
    digits = lambda t: [p for p in t.convert_ids_to_tokens(t.encode("(125,730) 2024")) if any(c.isdigit() for c in p)]  # noqa: E731
    assert digits(split) == list("1257302024")
    assert any(len(p.strip("Ġ(,)")) > 1 for p in digits(merged)), digits(merged)


def test_saved_tokenizer_reopens_in_transformers_and_ocellus(tok, tmp_path):
    tok.save(tmp_path)
    hf, ours = AutoTokenizer.from_pretrained(tmp_path), Tokenizer.from_dir(tmp_path)
    for text in TEXTS:
        assert hf.encode(text) == tok.encode(text) == ours.encode(text)
        assert hf.decode(tok.encode(text)) == text
    assert (hf.eos_token, hf.pad_token, hf.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert set(SPECIAL_TOKENS) <= set(hf.all_special_tokens)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": GROUNDING}]}]
    assert hf.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(messages)


def test_chat_template_renders_image_parts_and_strings(tok):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                {"role": "user", "content": "And its shape?"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>What colour?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
        "<|im_start|>user\nAnd its shape?<|im_end|>\n"
        "<|im_start|>assistant\n")
    # A shapes sample encodes through the jinja template exactly as through the built-in ChatML one.
    sample = next(samples(ShapesConfig(seed=1), 1, kind="conversation"))
    jinja = encode_messages(sample["messages"], tok, "jinja", images_tokens=[4])
    builtin = encode_messages(sample["messages"], tok, "chatml", images_tokens=[4])
    assert jinja.input_ids == builtin.input_ids and jinja.labels == builtin.labels
    assert jinja.input_ids.count(tok.convert_tokens_to_ids("<image>")) == 4


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(ConfigError, match="eos_token"):
        train_bpe(["abc"], vocab_size=300, eos_token="</s>")
