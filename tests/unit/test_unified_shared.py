"""What the unified models share (ocellus/models/unified/__init__.py): the frozen VQ tokenizer stays in eval mode
when its model trains, word captions end at <eos>, the id layout keeps markers, size tokens and codes apart, and
a caption's decoding may only choose text words or <eos>."""
import torch
from torch import nn

from ocellus.models import unified
from ocellus.models.unified import EOS, UnifiedVocab, WithImageTokenizer, WordVocab


def test_the_tokenizer_stays_frozen_in_eval_mode():
    holder = WithImageTokenizer(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))).train()
    assert holder.training and not holder.tokenizer.training
    assert not any(p.requires_grad for p in holder.tokenizer.parameters())


def test_word_captions_end_at_eos():
    vocab = WordVocab(["red", "circle", "blue"])
    assert vocab.decode([3, 4, EOS, 5]) == "red circle"
    assert vocab.decode(vocab.encode("blue circle")) == "blue circle"


def test_the_id_layout_keeps_every_kind_apart():
    v = UnifiedVocab(text_size=10, num_codes=5, max_grid=4)
    markers = [v.boi, v.eoi, v.eol, v.mask]
    sizes = [v.size_token(n) for n in range(1, 5)]
    ids = markers + sizes + list(range(v.code_base, v.size))
    assert ids == list(range(10, v.size)) and v.size == 10 + 4 + 4 + 5     # contiguous, no id used twice
    assert v.is_code(torch.tensor(v.code_base)) and not v.is_code(torch.tensor(sizes[-1]))


def test_captions_choose_only_text_words_or_eos(monkeypatch):
    vocab = WordVocab(["red", "circle"])
    seen = {}

    def fake_decode(decoder, rows, steps, choose_fn):
        logits = torch.zeros(1, 12)
        logits[0, 9] = 5.0                          # an image-side id is the model's favourite
        logits[0, 3] = 1.0                          # "red"
        seen["pick"] = int(choose_fn(0, logits)[0])
        return torch.tensor([[seen["pick"], EOS]])
    monkeypatch.setattr(unified, "cached_decode", fake_decode)
    decoder = type("D", (), {"config": type("C", (), {"vocab_size": 12})()})()
    assert unified.caption_after(decoder, vocab, [[1]]) == ["red"] and seen["pick"] == 3
