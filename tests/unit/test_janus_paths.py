"""Janus' two paths checked by hand (tests/unit/test_janus.py has the rest):

- training: the loss recomputed on both tasks in one batch (right-padded with -100 labels),

    L = CE(lm_head logits at t, text target t+1) over text targets
      + CE(gen_head(hidden state at t), code target t+1 - gen_base) over code targets

  position t predicting token t+1 on both paths (the paper's next-token objective; the reference computes the text
  loss with the LM's shifted logits and the image loss with gen_head on the shifted hidden states);
- captioning: describe() equals a greedy loop over the full forward, fed the i2t training row's prompt
  <bos> <boi> <image>*P <eoi> (sequence(..., 'i2t') up to the caption), words only.
"""
import torch
import torch.nn.functional as F

from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.unified import EOS, PAD, WordVocab
from ocellus.models.unified.janus import build_janus

WORDS = ["red", "blue", "circle", "square"]


def _janus():
    """A tiny Janus over a tiny VQ tokenizer (16 codes, a 4x4 grid of a 16 px image), in eval mode."""
    torch.manual_seed(0)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    return build_janus({"dim": 32, "num_layers": 2, "num_heads": 2, "vit_dim": 32, "vit_layers": 1, "vit_patch": 4,
                        "gen_embed_dim": 8}, tok, WordVocab(WORDS), 16).eval()


def test_loss_is_next_token_on_text_through_lm_head_and_on_codes_through_gen_head():
    m = _janus()
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


def test_describe_equals_a_greedy_loop_over_the_training_prompt():
    m = _janus()
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
