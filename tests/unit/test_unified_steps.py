"""One real training step of each unified model, on the recipe's own rows and collate (train/unified.py
token_rows + make_collate), against the objective written out by hand from the papers.

Emu3 (Wang et al. 2024): next-token CE over <bos> caption <boi> <h> <w> (codes <eol>)*h <eoi> <eos> (and the
image-first order), vision-side targets weighted 0.5: sum w CE / sum w.
Janus (Wu et al. 2024): text targets through the LM head, code targets through gen_head on the same hidden
states: mean CE_text + mean CE_code.
Show-o (Xie et al. 2024): a cosine share of the codes -> <mask>, CE at the masked positions (no shift) +
next-token CE on the caption.
"""
import math

import torch
import torch.nn.functional as F

from ocellus.models.generative.checkpoint import build
from ocellus.models.unified import BOS, EOS
from ocellus.train.unified import build_model, caption_data, make_collate, text_vocab, token_rows

from _unified_tiny import VQ_SPEC

COLOURS = ["red", "blue"]


def _setup(family, **spec):
    torch.manual_seed(0)
    text = text_vocab(COLOURS)
    model = build_model({"family": family, "dim": 32, "num_layers": 1, "num_heads": 2, **spec},
                        build(dict(VQ_SPEC)), text, 16)
    x, caps, _, _ = caption_data(3, 16, "train", COLOURS)                              # [3, 3, 16, 16]
    rows = token_rows(model, x, caps, ["t2i", "i2t"], 0.0, 0)
    batch = make_collate(x)(rows)
    words = [[text.index[w] for w in c.split()] for c in caps]
    codes = model.codes(x)                                                             # [3, 4, 4]
    return model, batch, words, codes


def _by_hand(batch, hand_rows):
    """The collate's ids equal the hand-written rows (right-padded with 0)."""
    ids = batch["input_ids"]
    for r, row in enumerate(hand_rows):
        assert ids[r, :len(row)].tolist() == row and (ids[r, len(row):] == 0).all()


def test_emu3_step_is_vision_weighted_next_token_loss_over_the_layout():
    m, batch, words, codes = _setup("emu3", vision_weight=0.5)
    v = m.vocab
    hand = []
    for w, c in zip(words, codes):
        img = [v.boi, v.size_token(4), v.size_token(4)]
        for row in c.tolist():                                                         # raster order, <eol> per row
            img += [v.code_base + k for k in row] + [v.eol]
        img.append(v.eoi)
        hand += [[BOS] + w + img + [EOS], [BOS] + img + w + [EOS]]                    # t2i, i2t
    _by_hand(batch, hand)
    loss = m(**batch).loss
    logits = m(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    num = den = 0.0
    for r, row in enumerate(hand):
        for t in range(len(row) - 1):                                                  # position t predicts t+1
            wt = 0.5 if row[t + 1] >= v.boi else 1.0                                   # image side: markers + codes
            num = num + wt * F.cross_entropy(logits[r, t], torch.tensor(row[t + 1]))
            den += wt
    torch.testing.assert_close(loss, num / den)


def test_janus_step_reads_codes_with_gen_head_and_words_with_lm_head():
    m, batch, words, codes = _setup("janus", vit_dim=32, vit_layers=1, vit_patch=4, gen_embed_dim=8)
    P = m.tokens_per_image
    hand, text_t, code_t = [], [], []
    for w, c in zip(words, codes):
        t2i = [BOS] + w + [m.boi] + [m.gen_base + k for k in c.flatten().tolist()]
        i2t = [BOS, m.boi] + [m.image_token] * P + [m.eoi] + w + [EOS]
        r = len(hand)
        code_t += [(r, t - 1, t2i[t] - m.gen_base) for t in range(len(w) + 2, len(t2i))]   # from <boi> on
        text_t += [(r + 1, t - 1, i2t[t]) for t in range(P + 3, len(i2t))]            # from <eoi> on
        hand += [t2i, i2t]
    _by_hand(batch, hand)
    loss = m(**batch).loss
    out = m.decoder(inputs_embeds=m.embed(batch["input_ids"], batch["pixel_values"]),
                    attention_mask=batch["attention_mask"])
    h, logits = out.hidden_states, out.logits                                          # [B, T, D], [B, T, V]
    l_text = torch.stack([F.cross_entropy(logits[r, t], torch.tensor(y)) for r, t, y in text_t]).mean()
    l_code = torch.stack([F.cross_entropy(m.gen_head(h[r, t]), torch.tensor(y)) for r, t, y in code_t]).mean()
    torch.testing.assert_close(loss, l_text + l_code)


def test_showo_step_is_masked_token_loss_on_codes_plus_next_token_loss_on_text():
    m, batch, words, codes = _setup("showo")
    v = m.vocab
    hand, code_pos, text_t = [], [], []
    for w, c in zip(words, codes):
        img = [v.code_base + k for k in c.flatten().tolist()]
        r = len(hand)
        code_pos.append((r, list(range(len(w) + 2, len(w) + 2 + 16))))                # codes of the t2i row
        i2t = [BOS, v.boi] + img + [v.eoi] + w + [EOS]
        text_t += [(r + 1, t - 1, i2t[t]) for t in range(19, len(i2t))]               # caption + <eos>, shifted
        hand += [[BOS] + w + [v.boi] + img + [v.eoi], i2t]
    _by_hand(batch, hand)
    ids = batch["input_ids"]
    B, T = ids.shape
    loss = m(ids, batch["attention_mask"], batch["labels"], generator=torch.Generator().manual_seed(2)).loss
    g = torch.Generator().manual_seed(2)                                               # replay the masking draws
    r = torch.rand(B, 1, generator=g)
    keys = torch.rand(B, T, generator=g)
    masked = torch.zeros(B, T, dtype=torch.bool)
    for row, pos in code_pos:
        n = round(math.cos(math.pi / 2 * r[row, 0].item()) * len(pos))               # cosine share of 16, rounded (Show-o)
        pos = torch.tensor(pos)
        masked[row, pos[keys[row, pos].topk(max(n, 1), largest=False).indices]] = True
    logits = m.logits(ids.masked_fill(masked, v.mask), batch["attention_mask"].bool())
    l_mtp = F.cross_entropy(logits[masked], ids[masked])                               # same position, no shift
    l_ntp = torch.stack([F.cross_entropy(logits[rr, t], torch.tensor(y)) for rr, t, y in text_t]).mean()
    assert 0 < masked.sum() < 48
    torch.testing.assert_close(loss, l_mtp + l_ntp)


def test_caption_dropout_only_empties_text_to_image_rows():
    """p_uncond drops the caption of t2i rows (the unconditional prompt CFG needs); i2t rows always keep it."""
    m, _, words, codes = _setup("emu3")
    x, caps, _, _ = caption_data(3, 16, "train", COLOURS)
    rows = token_rows(m, x, caps, ["t2i", "i2t"], 1.0 - 1e-9, 0)
    for (ids, labels, i), task in zip(rows, ["t2i", "i2t"] * 3):
        want = m.sequence(caps[i], codes[i], task, uncond=task == "t2i")
        assert (ids, labels) == want
        assert all(t in ids for t in words[i]) == (task == "i2t")


def _gumbel(u):
    return -torch.log(-torch.log(u.clamp_min(1e-20)))


def test_showo_decoding_guides_cond_against_caption_free_rows_and_remasks_the_least_confident():
    """generate_image_ids against a hand loop on stubbed logits: guidance (1 + w) l_cond - w l_uncond with the
    caption rows as cond and the <pad>-caption rows as uncond, MaskGIT re-masking of the least confident."""
    m, _, _, _ = _setup("showo")
    v, N, B, S, w, temp, ct = m.vocab, 16, 2, 3, 2.0, 0.9, 4.5
    caps = ["red circle", "blue square"]
    words = [[m.text.index[x] for x in c.split()] for c in caps]
    torch.manual_seed(3)
    T = 1 + 2 + 1 + N + 1
    table = [3 * torch.randn(2 * B, T, v.size) for _ in range(S)]                      # logits of each step
    seen = []

    def stub(ids, keep=None):
        seen.append(ids.clone())
        return table[len(seen) - 1]
    m.logits = stub
    out = m.generate_image_ids(caps, steps=S, guidance_weight=w, temperature=temp, choice_temperature=ct,
                               generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    codes, before = torch.full((B, N), -1), N                                          # -1 = still masked
    for s in range(S):
        slot = [[v.mask if c < 0 else v.code_base + c for c in row] for row in codes.tolist()]   # [B][N]
        want = [[BOS] + words[b] + [v.boi] + slot[b] + [v.eoi] for b in range(B)]
        want += [[BOS, 0, 0, v.boi] + slot[b] + [v.eoi] for b in range(B)]             # caption -> <pad>
        assert seen[s].tolist() == want
        lc, lu = table[s][:B, 4:4 + N, v.code_base:], table[s][B:, 4:4 + N, v.code_base:]  # [B, N, K]
        logp = F.log_softmax(((1 + w) * lc - w * lu) / temp, -1)
        masked = codes < 0
        draw = (logp + _gumbel(torch.rand(logp.shape, generator=g))).argmax(-1)
        new = torch.where(masked, draw, codes)
        conf = logp.gather(-1, new.clamp(min=0)[..., None])[..., 0]
        conf = conf + ct * (1 - (s + 1) / S) * _gumbel(torch.rand(conf.shape, generator=g))
        conf[~masked] = float("inf")
        after = max(0, min(math.floor(math.cos(math.pi / 2 * (s + 1) / S) * N), before - 1))
        codes = new.scatter(1, conf.topk(after, dim=1, largest=False).indices, -1)
        before = after
    assert torch.equal(out, codes) and (out >= 0).all()


def test_seed_tokenizer_step_reconstructs_from_the_quantized_codes():
    """SEED's loss = InfoNCE(last query, caption) + VQ (codebook + 0.25 commitment) + MSE(embedding from the
    nearest codes, target embedding); the reconstruction reads the quantized codes, not the raw queries."""
    from ocellus.models.connectors.qformer import QFormer, QFormerConfig
    from ocellus.models.unified.seed import SeedTokenizer
    from ocellus.models.vision.vit import ViTConfig, VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig.clip(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64,
                                           num_layers=1, num_heads=2))
    qf = QFormer(QFormerConfig(num_query_tokens=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1))
    m = SeedTokenizer(vit, qf, num_codes=16, code_dim=8, embed_dim=12).train()
    with torch.no_grad():
        m.quantizer.embedding.weight.normal_()
    px, cap, img = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 12), torch.randn(4, 12)
    out = m(px, cap, img)
    q = m.queries(px)                                                                  # [4, Q=4, D]
    sims = m.contrast(q[:, -1], cap)                                                   # last query vs captions
    t = torch.arange(4)
    l_con = (F.cross_entropy(sims, t) + F.cross_entropy(sims.t(), t)) / 2
    z = m.down(q)                                                                      # [4, 4, 8]
    book = m.quantizer.embedding.weight
    idx = (z[:, :, None] - book[None, None]).pow(2).sum(-1).argmin(-1)                 # [4, 4] nearest codes
    e = book[idx]                                                                      # [4, 4, 8]
    l_vq = (1 + 0.25) * F.mse_loss(z, e)
    recon = m.embedding_from(e.transpose(1, 2)[..., None])                             # [B, C, Q, 1] layout
    l_rec = F.mse_loss(recon, img)
    assert torch.equal(out.codes, idx)
    torch.testing.assert_close(out.loss, l_con + l_vq + l_rec)
