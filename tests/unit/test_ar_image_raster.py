"""Taming-style AR image generation: the sampled code stream is the raster order of the image grid.

The engine draws grid*grid codes after the class token; code t is the token at row t // grid, column
t % grid of the VQ grid (the order training reads them: `encode_to_ids(...).flatten(1)`). Greedy sampling
(top_k=1) is recomputed here by full forwards and decoded row-major; a transposed grid gives other images.
"""
import torch

from ocellus.models.generative.ar_image import ARImage, ar_decoder_config
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.text.decoder import DecoderLM

K, GRID = 32, 4


def _ar():
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(channels=8, num_codes=K)).eval()
    m = ARImage(DecoderLM(ar_decoder_config(K, 10, GRID, dim=32, num_layers=2, num_heads=2)), vq, 10, GRID).eval()
    with torch.no_grad():   # at init std 0.02 the draw hardly depends on the prefix: make it
        for p in m.decoder.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return m


@torch.no_grad()
def test_generated_codes_are_decoded_in_raster_order():
    m = _ar()
    labels = torch.tensor([2, 7])
    seq = K + labels[:, None]
    for _ in range(GRID * GRID):
        nxt = m(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    codes = seq[:, 1:].view(2, GRID, GRID)                                       # row-major
    assert not torch.equal(codes, codes.transpose(1, 2))                        # the test can tell the two apart
    want = m.tokenizer.decode_ids(codes).clamp(-1, 1)
    got = m.generate(labels, top_k=1, seed=0)
    torch.testing.assert_close(got, want)
