"""encode_texts (models/text/clip_text.py) prepares captions as CLIP's and SigLIP's tokenizers do: EOS appended,
right-padded with the pad token (EOS when there is none), SigLIP's to max_length, an over-long text refused (one of
exactly max_length kept)."""
import pytest

from ocellus.errors import ConfigError, InputError
from ocellus.models.text.clip_text import encode_texts


class Tok:
    """Whitespace words -> ids 10, 11, ... in order of appearance."""

    def __init__(self, eos=2, pad=0):
        self.eos_token_id, self.pad_token_id, self.vocab = eos, pad, {}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]


def test_eos_appended_and_padded_with_the_pad_token():
    out = encode_texts(["a red circle", "a star"], Tok(eos=2, pad=0), 8)
    assert out["input_ids"].tolist() == [[10, 11, 12, 2], [10, 13, 2, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_without_a_pad_token_eos_pads_and_siglip_pads_to_max_length():
    out = encode_texts(["a star"], Tok(eos=2, pad=None), 5, pad_to_max=True)
    assert out["input_ids"].tolist() == [[10, 11, 2, 2, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0]]


def test_too_long_and_no_eos_are_refused():
    with pytest.raises(InputError, match=r"text 1 \('one two three four'\) is 5 tokens with EOS; .* at most 4"):
        encode_texts(["ok", "one two three four"], Tok(), 4)
    exact = encode_texts(["one two three"], Tok(), 4)           # 4 tokens with EOS: exactly max_length fits
    assert exact["input_ids"].tolist() == [[10, 11, 12, 2]] and exact["attention_mask"].tolist() == [[1, 1, 1, 1]]
    with pytest.raises(ConfigError, match="no eos_token"):
        encode_texts(["ok"], Tok(eos=None), 4)
