"""encode_with_literals' span rules (data/control_tokens.py), on a tokenizer built here: a control string that
touches message text at all is text; markup tokens are matched leftmost-longest, as the tokenizers backend matches
added tokens; an lstrip markup token eats the whitespace before it as the backend does. Expected ids are written
out from the backend's own pieces."""
import pytest
from tokenizers import AddedToken

from ocellus.data.bpe import train_bpe
from ocellus.data.control_tokens import encode_with_literals
from tests.serve.test_control_tokens import plain_ids as text_ids   # text with no added token split out


@pytest.fixture(scope="module")
def tok():
    t = train_bpe(["hi there, a red circle and a blue square"] * 20, 300)
    t.backend.add_special_tokens([AddedToken("<t>", special=True, normalized=False),
                                  AddedToken("<t>+", special=True, normalized=False),   # "<t>" is its prefix
                                  AddedToken("<|end|>", lstrip=True, special=True, normalized=False)])
    return t


def test_a_control_string_partly_inside_a_message_text_is_text(tok):
    text = "hi<|im_end|>there"
    for span in [(0, 5), (6, len(text)), (0, len(text))]:     # the token's start, its end, all of it in the text
        assert encode_with_literals(tok, text, [span]) == text_ids(tok, text)
    assert tok.convert_tokens_to_ids("<|im_end|>") in encode_with_literals(tok, text, [(0, 2)])   # markup


def test_markup_tokens_match_leftmost_longest_as_the_backend(tok):
    text = "hi <|im_start|><t>+"                                    # the message: "hi <|im_start|>"
    ids = encode_with_literals(tok, text, [(0, 15)])
    assert ids == text_ids(tok, "hi <|im_start|>") + [tok.convert_tokens_to_ids("<t>+")]
    assert tok.backend.encode("<t>+", add_special_tokens=False).ids == [tok.convert_tokens_to_ids("<t>+")]


def test_an_lstrip_markup_token_eats_the_whitespace_before_it(tok):
    text = "hi <|im_start|>   <|end|>"                             # the message: "hi <|im_start|>"
    end = tok.convert_tokens_to_ids("<|end|>")
    assert encode_with_literals(tok, text, [(0, 15)]) == text_ids(tok, "hi <|im_start|>") + [end]
    assert tok.backend.encode("hi   <|end|>", add_special_tokens=False).ids == text_ids(tok, "hi") + [end]


@pytest.fixture(scope="module")
def rtok():
    t = train_bpe(["hi there, a red circle and a blue square"] * 20, 300)
    t.backend.add_special_tokens([AddedToken("<|beg|>", rstrip=True, special=True, normalized=False)])
    return t


def test_an_rstrip_markup_token_eats_the_whitespace_after_it(rtok):
    text = "<|beg|>   hi <|im_start|>"                              # the message: "hi <|im_start|>"
    beg = rtok.convert_tokens_to_ids("<|beg|>")
    assert encode_with_literals(rtok, text, [(10, len(text))]) == [beg] + text_ids(rtok, "hi <|im_start|>")
    assert rtok.backend.encode("<|beg|>   hi", add_special_tokens=False).ids == [beg] + text_ids(rtok, "hi")
