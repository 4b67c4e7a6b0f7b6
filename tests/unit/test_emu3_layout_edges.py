"""Emu3's constraint and non-square images.

- At a code step the constraint allows exactly the num_codes code ids: no marker, no size token, no word.
  (A wrong slice there is invisible to parse_body, which checks against the same table.)
- generate_images honours h != w: the header, the body length and the decoded image all follow (h, w).
"""
import torch

from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.text.decoder import DecoderLM
from ocellus.models.unified import UnifiedVocab, WordVocab
from ocellus.models.unified.emu3 import Emu3, decoder_config

WORDS = ["red", "blue", "circle", "square"]


def tiny(seed=0):
    torch.manual_seed(seed)
    text = WordVocab(WORDS)
    vocab = UnifiedVocab(len(text), 16, max_grid=8)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    return Emu3(DecoderLM(decoder_config(vocab.size, 128, dim=32, num_layers=2, num_heads=2)), tok, vocab, text,
                grid=4).eval()


def test_code_steps_allow_exactly_the_codes():
    m = tiny()
    v = m.vocab
    for step in (0, 2, 4, 6):                                              # h=2, w=3: codes at col 0..2
        allowed = m.allowed_at(step, 2, 3)
        assert allowed.sum() == v.num_codes and allowed[v.code_base:].all()
    assert m.allowed_at(3, 2, 3).nonzero().flatten().tolist() == [v.eol]
    assert m.allowed_at(8, 2, 3).nonzero().flatten().tolist() == [v.eoi]


def test_non_square_images_keep_their_width():
    m = tiny()
    g = torch.Generator().manual_seed(0)
    imgs = m.generate_images(["red circle"], h=2, w=4, guidance_scale=1.0, generator=g)
    assert imgs.shape == (1, 3, 2 * 4, 4 * 4)                              # downsample 4: grid (2, 4)
    assert m.generate_images(["red"], guidance_scale=1.0, generator=g).shape == (1, 3, 16, 16)   # the default grid
