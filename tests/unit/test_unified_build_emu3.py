"""models/unified/checkpoint.build_model for Emu3: the context budget and the vision_weight key.

The decoder's context is 16 (caption with <bos>/<eos>) + grid*(grid+1) (codes and one <eol> per row) + 4
(<boi> <h> <w> <eoi>): a caption of 14 words must train as t2i and draw a full image without running out
of positions. `vision_weight` is a model key of its own (the paper's 0.5 by default).
"""
import torch

from ocellus.models.generative.checkpoint import build
from ocellus.models.unified.checkpoint import build_model, text_vocab

VQ = {"kind": "vqvae", "vq": {"in_channels": 3, "channels": 8, "channel_mults": [1, 2], "embed_dim": 4,
                              "num_codes": 16, "groups": 4}, "class_names": [], "image_size": 16}


def emu3(**spec):
    torch.manual_seed(0)
    return build_model({"family": "emu3", "dim": 32, "num_layers": 1, "num_heads": 2, **spec}, build(dict(VQ)),
                       text_vocab(["red", "blue"]), 16).eval()


def test_a_fourteen_word_caption_and_its_image_fit_the_context():
    m = emu3()
    caption = " ".join(["red", "circle"] * 7)                                 # 14 words
    assert len(m.text.encode(caption)) == 14
    codes = torch.randint(0, 16, (m.grid, m.grid))
    ids, labels = m.sequence(caption, codes, "t2i")
    assert len(ids) == m.decoder.max_context                                   # exactly the budget
    out = m(torch.tensor([ids]), labels=torch.tensor([labels]))
    assert torch.isfinite(out.loss)
    imgs = m.generate_images([caption], guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (1, 3, 16, 16)


def test_vision_weight_is_read_from_the_spec():
    assert emu3().vision_weight == 0.5
    assert emu3(vision_weight=0.25).vision_weight == 0.25
