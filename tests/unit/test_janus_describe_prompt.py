"""Janus captions an image from the prompt it was trained on: describe() equals a greedy loop over the full
forward, fed the i2t training row's prompt <bos> <boi> <image>*P <eoi> (sequence(..., 'i2t') up to the caption),
words only."""
import torch

from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.unified import EOS, WordVocab
from ocellus.models.unified.janus import build_janus

WORDS = ["red", "blue", "circle", "square"]


def test_describe_equals_a_greedy_loop_over_the_training_prompt():
    torch.manual_seed(0)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    m = build_janus({"dim": 32, "num_layers": 2, "num_heads": 2, "vit_dim": 32, "vit_layers": 1, "vit_patch": 4,
                     "gen_embed_dim": 8}, tok, WordVocab(WORDS), 16).eval()
    with torch.no_grad():   # make the caption depend on what precedes it
        for mod in (m.decoder, m.und_aligner):
            for p in mod.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.5)
    px = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ids, _ = m.sequence("", torch.zeros(4, 4, dtype=torch.long), "i2t")
    prompt = ids[:-1]                                                        # the i2t row before the caption
    assert prompt[-1] == m.eoi
    words = []
    with torch.no_grad():
        for b in range(2):
            seq = list(prompt)
            for _ in range(4):
                logits = m(torch.tensor([seq]), pixel_values=px[b:b + 1]).logits[0, -1]
                allowed = torch.zeros_like(logits, dtype=torch.bool)
                allowed[EOS:len(m.text)] = True
                seq.append(int(logits.masked_fill(~allowed, float("-inf")).argmax()))
            words.append(m.text.decode(seq[len(prompt):]))
    assert m.describe(px, max_new_tokens=4) == words
