"""ALBEF (Li et al. 2021, sec. 3.2-3.3): ONE real forward of the model, each of its three losses
recomputed here from the paper's formulas on the same tensors.

  ITC  (Eq. 6-7)  s = g_v(v_cls)^T g'_w(w'_cls) / tau over [momentum batch ; queue]; targets
                  y = (1 - alpha) y_true + alpha softmax(s_m / tau) with s_m from the MOMENTUM features
  ITM             hard negatives drawn from softmax(s) over the batch's non-positives; CE with label 1 on
                  the B positives, 0 on the 2B negatives
  MLM  (Eq. 8)    target at each MASKED position = (1 - alpha) one-hot + alpha softmax(momentum model's
                  logits on the same masked text and the momentum image states); mean over masked positions

The momentum model is perturbed away from the online one, so any wiring that reads the online model
(or the unmasked text, or the online image) where the momentum one belongs gives another number.
"""
import pytest
import torch
import torch.nn.functional as F

import ocellus.models.contrastive.albef as albef_mod
from ocellus.models.contrastive.albef import build_albef
from ocellus.models.contrastive.losses import hard_negatives

from test_albef import TEXT, VISION, random_batch

pytestmark = pytest.mark.usefixtures("one_thread")

ALPHA, B = 0.4, 8


def _model(**align):
    torch.manual_seed(0)
    cfg = {"vision_config": VISION, "text_config": TEXT,
           "align_config": dict(tokenizer_size=40, eos_token_id=1, pad_token_id=0, embed_dim=16, queue_size=64,
                                text_layers=2, alpha=ALPHA, alpha_warmup_steps=0, **align)}
    model = build_albef(cfg).eval()            # eval: no EMA, no enqueue, alpha = ALPHA (no ramp)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bert in (model.text_encoder, model.text_encoder_m):   # BERT's init (std 0.02) barely reads
            for name, p in bert.named_parameters():              # the image: make ITM / MLM depend on it
                if "crossattention" in name and name.endswith("weight") and "LayerNorm" not in name:
                    p.mul_(20.0)
        for _, twin in model.momentum_pairs():                 # momentum model != online model
            for p in twin.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        # 16 older momentum features already queued (ids 100..115, one shared with the batch below)
        qi, qt = F.normalize(torch.randn(16, 16, generator=g), dim=-1), F.normalize(torch.randn(16, 16, generator=g), dim=-1)
        qids = torch.arange(100, 116)
        qids[0] = 3
        model.queue.enqueue(qi, qt, qids)
    return model


def _soft_ce(logits, target):
    """-sum_c y_c log softmax(logits)_c per row."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1)


def _itc_by_hand(model, px, ids, mask, pair_ids, queue):
    """Eq. 6-7 with the model's current online and momentum towers and the given queue (image [k, E],
    text [k, E], ids [k]) -> (loss, v_m, w_m)."""
    tau = model.temp.clamp(0.001, 0.5)
    v = F.normalize(model.vision_proj(model.visual_encoder(px).pooler_output), dim=-1)             # [B, E]
    w = F.normalize(model.text_proj(model.text_states(ids, mask)[:, 0]), dim=-1)
    v_m = F.normalize(model.vision_proj_m(model.visual_encoder_m(px).pooler_output), dim=-1)
    w_m = F.normalize(model.text_proj_m(model.text_states(ids, mask, model.text_encoder_m)[:, 0]), dim=-1)
    img_all, txt_all = torch.cat([v_m, queue[0]]), torch.cat([w_m, queue[1]])                       # [B + k, E]
    y = (pair_ids[:, None] == torch.cat([pair_ids, queue[2]])[None, :]).float()
    y = y / y.sum(1, keepdim=True)                                                               # [B, B + k]
    y_i2t = (1 - ALPHA) * y + ALPHA * F.softmax(v_m @ txt_all.t() / tau, dim=1)
    y_t2i = (1 - ALPHA) * y + ALPHA * F.softmax(w_m @ img_all.t() / tau, dim=1)
    loss = (_soft_ce(v @ txt_all.t() / tau, y_i2t).mean() + _soft_ce(w @ img_all.t() / tau, y_t2i).mean()) / 2
    return loss, v_m, w_m


def test_training_forward_ema_first_then_itc_then_queue_gets_momentum_features():
    """Training mode: theta_m <- m theta_m + (1 - m) theta first, ITC against the queue as it was, then
    this batch's MOMENTUM features and ids go into the next slots (FIFO)."""
    model = _model(momentum=0.5).train()
    px, ids, mask = random_batch(B=B)
    pair_ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 1])
    before = {n: p.clone() for n, p in model.named_parameters()}
    old = (model.queue.image_queue[:, :16].t().clone(), model.queue.text_queue[:, :16].t().clone(),
           model.queue.idx_queue[:16].clone())
    with torch.no_grad():
        out = model(px, ids, mask, ids=pair_ids, generator=torch.Generator().manual_seed(0))
        for name, p in model.named_parameters():
            if name.startswith(("visual_encoder_m.", "vision_proj_m.", "text_encoder_m.", "text_proj_m.")):
                online = before[name.replace("_m.", ".", 1)]
                torch.testing.assert_close(p, 0.5 * before[name] + 0.5 * online, msg=name)
            else:
                assert torch.equal(p, before[name]), name
        itc, v_m, w_m = _itc_by_hand(model, px, ids, mask, pair_ids, old)
    assert out.alpha == ALPHA and int(model.step) == 1
    torch.testing.assert_close(out.loss_itc, itc)
    torch.testing.assert_close(model.queue.image_queue[:, 16:24].t(), v_m)
    torch.testing.assert_close(model.queue.text_queue[:, 16:24].t(), w_m)
    assert torch.equal(model.queue.idx_queue[16:24], pair_ids) and int(model.queue.filled) == 24


def _run(model, monkeypatch):
    """The model's forward, recording the hard negatives and the MLM corruption it drew."""
    px, ids, mask = random_batch(B=B)
    pair_ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 1])             # pairs 1 and 7 share a caption
    seen = {}
    real_neg, real_mask = albef_mod.hard_negatives, albef_mod.mask_for_mlm

    def neg_spy(sim_i2t, sim_t2i, ids=None, generator=None):
        seen["sim"] = (sim_i2t.clone(), sim_t2i.clone())
        seen["neg"] = real_neg(sim_i2t, sim_t2i, ids, generator)
        return seen["neg"]

    def mask_spy(*a, **k):
        seen["mlm"] = real_mask(*a, **k)
        return seen["mlm"]
    monkeypatch.setattr(albef_mod, "hard_negatives", neg_spy)
    monkeypatch.setattr(albef_mod, "mask_for_mlm", mask_spy)
    with torch.no_grad():
        out = model(px, ids, mask, ids=pair_ids, generator=torch.Generator().manual_seed(0))
    return out, seen, (px, ids, mask, pair_ids)


def test_itc_uses_momentum_soft_targets_over_batch_and_queue(monkeypatch):
    model = _model()
    out, seen, (px, ids, mask, pair_ids) = _run(model, monkeypatch)
    assert out.alpha == ALPHA
    with torch.no_grad():
        tau = model.temp.clamp(0.001, 0.5)
        v = F.normalize(model.vision_proj(model.visual_encoder(px).pooler_output), dim=-1)             # [B, E]
        w = F.normalize(model.text_proj(model.text_states(ids, mask)[:, 0]), dim=-1)
        v_m = F.normalize(model.vision_proj_m(model.visual_encoder_m(px).pooler_output), dim=-1)
        w_m = F.normalize(model.text_proj_m(model.text_states(ids, mask, model.text_encoder_m)[:, 0]), dim=-1)
        qi, qt, qids = model.queue.image_queue[:, :16].t(), model.queue.text_queue[:, :16].t(), model.queue.idx_queue[:16]
        img_all, txt_all = torch.cat([v_m, qi]), torch.cat([w_m, qt])                                # [B + 16, E]
        ids_all = torch.cat([pair_ids, qids])
        y = (pair_ids[:, None] == ids_all[None, :]).float()
        y = y / y.sum(1, keepdim=True)                                                               # [B, B + 16]
        s_i2t, s_t2i = v @ txt_all.t() / tau, w @ img_all.t() / tau
        y_i2t = (1 - ALPHA) * y + ALPHA * F.softmax(v_m @ txt_all.t() / tau, dim=1)
        y_t2i = (1 - ALPHA) * y + ALPHA * F.softmax(w_m @ img_all.t() / tau, dim=1)
        itc = (_soft_ce(s_i2t, y_i2t).mean() + _soft_ce(s_t2i, y_t2i).mean()) / 2
    torch.testing.assert_close(out.loss_itc, itc)
    # ITM's sampler was handed the batch block of these similarities
    torch.testing.assert_close(seen["sim"][0], s_i2t[:, :B])
    torch.testing.assert_close(seen["sim"][1], s_t2i[:, :B])


def test_itm_is_ce_on_positives_and_sampled_hard_negatives(monkeypatch):
    model = _model()
    out, seen, (px, ids, mask, pair_ids) = _run(model, monkeypatch)
    neg_t, neg_i = seen["neg"]
    same = pair_ids[:, None] == pair_ids[None, :]
    assert not same[torch.arange(B), neg_t].any() and not same[neg_i, torch.arange(B)].any()
    with torch.no_grad():
        image = model.visual_encoder(px).last_hidden_state
        text = model.text_states(ids, mask)
        texts = torch.cat([text, text, text[neg_t]])
        masks = torch.cat([mask, mask, mask[neg_t]])
        images = torch.cat([image, image[neg_i], image])
        logits = model.itm_head(model.fuse(texts, masks, images)[:, 0])                              # [3B, 2]
        itm = F.cross_entropy(logits, torch.tensor([1] * B + [0] * 2 * B))
        # the same negatives with the negative images paired to the other texts: a clearly different loss
        swapped = model.itm_head(model.fuse(texts, masks, torch.cat([image, image, image[neg_i]]))[:, 0])
        assert abs(F.cross_entropy(swapped, torch.tensor([1] * B + [0] * 2 * B)) - itm) > 1e-3
    torch.testing.assert_close(out.loss_itm, itm)


def test_mlm_distils_from_the_momentum_model_at_masked_positions(monkeypatch):
    model = _model()
    out, seen, (px, ids, mask, _) = _run(model, monkeypatch)
    masked, labels = seen["mlm"]
    chosen = labels != -100
    assert chosen.any() and (labels[chosen] == ids[chosen]).all()
    with torch.no_grad():
        image, image_m = model.visual_encoder(px).last_hidden_state, model.visual_encoder_m(px).last_hidden_state
        online = model.text_encoder.mlm(model.fuse(model.text_states(masked, mask), mask, image))    # [B, T, V]
        tm = model.text_encoder_m
        teacher = tm.mlm(model.fuse(model.text_states(masked, mask, tm), mask, image_m, tm))         # [B, T, V]
        V = online.shape[-1]
        target = (1 - ALPHA) * F.one_hot(labels[chosen], V).float() + ALPHA * F.softmax(teacher[chosen], -1)
        mlm = _soft_ce(online[chosen], target).mean()
        # the same with the ONLINE model as teacher: a different number, so the check can fail
        wrong = _soft_ce(online[chosen], (1 - ALPHA) * F.one_hot(labels[chosen], V).float()
                         + ALPHA * F.softmax(online[chosen], -1)).mean()
    torch.testing.assert_close(out.loss_mlm, mlm)
    assert not torch.allclose(mlm, wrong, atol=1e-4)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_mlm)


def test_hard_negative_frequencies_follow_the_similarity_softmax():
    """ITM negatives are DRAWN with p_j proportional to softmax(s_i)_j + 1e-4 over non-positives (not the
    argmax, never a positive): empirical frequencies over many draws match that distribution."""
    s = torch.tensor([[5.0, 1.0, 0.0, 2.0], [0.5, 5.0, 1.5, 0.0], [0.0, 0.0, 5.0, 1.0], [1.0, 0.5, 0.0, 5.0]])
    ids = torch.tensor([0, 1, 2, 0])                                  # 0 and 3 share an id: positives
    same = ids[:, None] == ids[None, :]
    g = torch.Generator().manual_seed(0)
    n = 1500
    counts_t, counts_i = torch.zeros(4, 4), torch.zeros(4, 4)
    for _ in range(n):
        nt, ni = hard_negatives(s, s.t() * 0.5, ids, g)
        counts_t[torch.arange(4), nt] += 1
        counts_i[torch.arange(4), ni] += 1
    for sim, counts in ((s, counts_t), (s.t() * 0.5, counts_i)):
        w = (torch.softmax(sim, 1) + 1e-4) * ~same
        expected = w / w.sum(1, keepdim=True)
        assert (counts[same] == 0).all()
        torch.testing.assert_close(counts / n, expected, atol=0.05, rtol=0)
