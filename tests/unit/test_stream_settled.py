"""TextStreamDecoder on token sequences that stay or turn invalid: the deltas, flush included, concatenate to the
whole decode (U+FFFD characters included) for random byte-level and byte-fallback sequences, and never show text the
whole decode later rewrites (a byte-fallback run that turns invalid, a tail the clean-up glues back on)."""
import json
import random

import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from ocellus.data.tokenizer import Tokenizer
from ocellus.infer.streaming import TextStreamDecoder

CORPUS = ["Hello world, the quick brown fox. Don't panic!", "café crème — déjà vu 🙂", "日本語 it's a cat ."] * 3
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
BYTES = [f"<0x{i:02X}>" for i in range(256)]


def _byte_level() -> Tokenizer:
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(SPECIALS.values()), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return Tokenizer(raw, special_tokens=SPECIALS)


def _byte_fallback() -> Tokenizer:
    """Llama-2's decoder: "▁" -> " ", byte pieces <0xNN> fused into UTF-8 (each byte of an invalid run -> U+FFFD)."""
    raw = RawTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    raw.train_from_iterator([c.replace(" ", "▁") for c in CORPUS], trainers.BpeTrainer(
        vocab_size=150, special_tokens=list(SPECIALS.values()), show_progress=False))
    data = json.loads(raw.to_str())   # the byte pieces are vocabulary, as in Llama's, not (special) added tokens
    vocab = data["model"]["vocab"]
    vocab.update({b: len(vocab) + k for k, b in enumerate(b for b in BYTES if b not in vocab)})
    return Tokenizer(RawTokenizer.from_str(json.dumps(data)), special_tokens=SPECIALS)


def _wordpiece_clean_up() -> Tokenizer:
    raw = RawTokenizer(models.WordPiece(unk_token="<unk>"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    raw.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=list(SPECIALS.values()),
                                                              show_progress=False))
    return Tokenizer(raw, special_tokens=SPECIALS, config={"clean_up_tokenization_spaces": True})


TOKENIZERS = {"byte_level": _byte_level, "byte_fallback": _byte_fallback, "clean_up": _wordpiece_clean_up}


def _stream(tok, ids, skip, rng):
    """Deltas of a stream fed 1-3 ids at a time; each shown text must stay a prefix of the whole decode."""
    decoder = TextStreamDecoder(tok, skip_special_tokens=skip, context_chunks=rng.choice([1, 2, 4]))
    whole, shown, at = tok.decode(ids, skip_special_tokens=skip), "", 0
    while at < len(ids):
        step = rng.randint(1, 3)
        shown += decoder.push(ids[at:at + step])
        at += step
        assert whole.startswith(shown), (shown, whole)
    return shown + decoder.flush(), whole


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_random_sequences_stream_to_the_whole_decode(name):
    tok, rng = TOKENIZERS[name](), random.Random(0)
    vocab = tok.backend.get_vocab(with_added_tokens=True)
    # byte tokens: the single-byte symbols of byte-level BPE, the <0xNN> pieces of byte fallback
    byte_ids = [i for t, i in vocab.items() if t in BYTES or len(t) == 1]
    for _ in range(400):
        ids = [rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(len(tok))
               for _ in range(rng.randint(0, 12))]
        for skip in (False, True):
            streamed, whole = _stream(tok, ids, skip, rng)
            assert streamed == whole, ids


def test_a_valid_byte_is_held_until_its_run_is_settled():
    """"6" then a lone continuation byte: the run decodes as two U+FFFD, so "6" is never shown alone."""
    tok = _byte_fallback()
    six, lone, eos = tok.convert_tokens_to_ids(["<0x36>", "<0x8E>", "</s>"])
    decoder = TextStreamDecoder(tok, skip_special_tokens=True)
    assert decoder.push(six) == ""
    assert decoder.push(eos) == ""          # a skipped special token writes nothing: the run goes on
    assert decoder.push(lone) == ""
    assert decoder.flush() == tok.decode([six, eos, lone], skip_special_tokens=True) == "\ufffd\ufffd"
    word = tok.convert_tokens_to_ids("▁Hello") or tok.convert_tokens_to_ids("▁H")
    decoder = TextStreamDecoder(tok)
    assert decoder.push(six) + decoder.push(word) == tok.decode([six, word])   # another token settles the run


def test_the_clean_up_tail_waits_for_the_next_token():
    tok = _wordpiece_clean_up()
    ids = tok.encode("it ' s a cat .", add_special_tokens=False)
    decoder = TextStreamDecoder(tok)
    deltas = [decoder.push(i) for i in ids]
    assert "".join(deltas) + decoder.flush() == tok.decode(ids) == "it's a cat."
    assert deltas[1] == ""                  # "it '" may still become "it's"
