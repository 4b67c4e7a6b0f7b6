"""Janus' training loss recomputed by hand on both tasks, in one batch (right-padded with -100 labels):

    L = CE(lm_head logits at t, text target t+1) over text targets
      + CE(gen_head(hidden state at t), code target t+1 - gen_base) over code targets

position t predicts token t+1 on both paths (the paper's next-token objective; the reference computes the
text loss with the LM's shifted logits and the image loss with gen_head on the shifted hidden states).
"""
import torch
import torch.nn.functional as F

from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.unified import PAD, WordVocab
from ocellus.models.unified.janus import build_janus

WORDS = ["red", "blue", "circle", "square"]


def test_loss_is_next_token_on_text_through_lm_head_and_on_codes_through_gen_head():
    torch.manual_seed(0)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    m = build_janus({"dim": 32, "num_layers": 2, "num_heads": 2, "vit_dim": 32, "vit_layers": 1, "vit_patch": 4,
                     "gen_embed_dim": 8}, tok, WordVocab(WORDS), 16).eval()
    with torch.no_grad():
        for p in m.decoder.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    codes = torch.randint(0, 16, (4, 4), generator=torch.Generator().manual_seed(1))
    rows = [m.sequence("red circle square", codes, "i2t"), m.sequence("blue", codes, "t2i")]
    T = max(len(r[0]) for r in rows)
    ids = torch.tensor([r[0] + [PAD] * (T - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (T - len(r[1])) for r in rows])
    mask = torch.tensor([[1] * len(r[0]) + [0] * (T - len(r[0])) for r in rows])
    px = torch.rand(2, 3, 16, 16) * 2 - 1
    px[1] = 0                                                                # row 1 has no <image> slots
    with torch.no_grad():
        loss = m(ids, attention_mask=mask, labels=labels, pixel_values=px).loss
        out = m.decoder(inputs_embeds=m.embed(ids, px), attention_mask=mask)
        text_terms, code_terms = [], []
        for b in range(2):
            for t in range(T - 1):
                y = int(labels[b, t + 1])
                if y == -100:
                    continue
                if y >= m.gen_base:
                    code_terms.append(F.cross_entropy(m.gen_head(out.hidden_states[b, t])[None], torch.tensor([y - m.gen_base])))
                else:
                    text_terms.append(F.cross_entropy(out.logits[b, t][None], torch.tensor([y])))
    assert text_terms and code_terms
    want = torch.stack(text_terms).mean() + torch.stack(code_terms).mean()
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
