"""BLIP-2 stage 1 (ocellus/models/families/blip2/stage1.py): the three attention masks do what sec. 3.2
says (property tests through the real Q-Former), each loss equals its formula on a small fixed
example, hard negatives are never the positive, a few steps on shapes captions make the sum fall,
and the stage-1 checkpoint round-trips through ocellus.save / ocellus.load."""
import math

import pytest
import torch
import torch.nn.functional as F

import ocellus
from ocellus.errors import ConfigError, InputError
from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.contrastive.losses import itg_loss
from ocellus.models.families.blip2.stage1 import QFormerPretraining, hard_negatives, itc_loss, itc_similarity, qformer_mask

Q, VOCAB = 3, 40


def _qformer(seed=0):
    torch.manual_seed(seed)
    return QFormer(QFormerConfig(num_query_tokens=Q, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, encoder_hidden_size=24, cross_attention_frequency=1,
                                 text_input=True, vocab_size=VOCAB, max_position_embeddings=16)).eval()


def _pretraining(seed=0):
    torch.manual_seed(seed)
    vit = VisionTransformer(ViTConfig.clip(image_size=16, patch_size=8, hidden_size=24, intermediate_size=48,
                                           num_layers=1, num_heads=2))
    q = _qformer(seed)
    return QFormerPretraining(vit, q, embed_dim=16)


def _text(B=2, T=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB - 2, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    return ids, mask


def test_mask_shapes_and_rules():
    text_mask = torch.tensor([[1, 1, 1, 0]])
    T = 4
    for kind in ("unimodal", "causal", "bidirectional"):
        m = qformer_mask(kind, Q, text_mask)[0, 0]                                # [Q+T, Q+T]
        assert m.shape == (Q + T, Q + T)
        assert m.diagonal().all()                                                 # each token sees itself
        assert not m[:, Q + 3][torch.arange(Q + T) != Q + 3].any()                # padding key unseen by others
        assert m[:Q, :Q].all()                                                    # queries always see queries
    uni, causal, bi = (qformer_mask(k, Q, text_mask)[0, 0] for k in ("unimodal", "causal", "bidirectional"))
    assert not uni[:Q, Q:].any() and not uni[Q:, :Q].any()                        # blind to each other
    assert not causal[:Q, Q:].any() and causal[Q:Q + 3, :Q].all()                 # text reads queries, not back
    text_part = causal[Q:Q + 3, Q:Q + 3]
    assert torch.equal(text_part, torch.tril(torch.ones(3, 3, dtype=torch.bool)))  # never the future
    assert bi[:Q + 3, :Q + 3].all()
    with pytest.raises(ConfigError, match="choose from"):
        qformer_mask("sideways", Q, text_mask)


@pytest.mark.parametrize("kind", ["unimodal", "causal"])
def test_query_outputs_do_not_depend_on_text(kind):
    q = _qformer()
    image = torch.randn(2, 5, 24)
    ids, mask = _text()
    other = ids.clone()
    other[:, 1:] = (other[:, 1:] + 7) % (VOCAB - 2)
    with torch.no_grad():
        a = q(image, input_ids=ids, mask=qformer_mask(kind, Q, mask))
        b = q(image, input_ids=other, mask=qformer_mask(kind, Q, mask))
        c = q(image, input_ids=ids, mask=qformer_mask("bidirectional", Q, mask))
        d = q(image, input_ids=other, mask=qformer_mask("bidirectional", Q, mask))
    torch.testing.assert_close(a[:, :Q], b[:, :Q], atol=0, rtol=0)
    assert not torch.allclose(c[:, :Q], d[:, :Q])                                  # the check can fail


def test_unimodal_text_does_not_depend_on_image_and_causal_text_not_on_future():
    q = _qformer()
    ids, mask = _text()
    with torch.no_grad():
        a = q(torch.randn(2, 5, 24), input_ids=ids, mask=qformer_mask("unimodal", Q, mask))
        b = q(torch.randn(2, 5, 24), input_ids=ids, mask=qformer_mask("unimodal", Q, mask))
        alone = q(input_ids=ids, mask=mask.bool()[:, None, None, :], use_queries=False)   # text only
    torch.testing.assert_close(a[:, Q:], b[:, Q:], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[0, Q:], alone[0], atol=1e-5, rtol=1e-5)
    image = torch.randn(2, 5, 24)
    later = ids.clone()
    later[:, 3:] = (later[:, 3:] + 5) % (VOCAB - 2)
    full = torch.ones_like(mask)
    with torch.no_grad():
        c = q(image, input_ids=ids, mask=qformer_mask("causal", Q, full))
        d = q(image, input_ids=later, mask=qformer_mask("causal", Q, full))
        e = q(image * 2, input_ids=ids, mask=qformer_mask("causal", Q, full))
    torch.testing.assert_close(c[:, :Q + 3], d[:, :Q + 3], atol=1e-6, rtol=0)     # tokens 0..2 ignore 3, 4
    assert not torch.allclose(c[:, Q:], e[:, Q:])                                 # but text reads the image


def test_itc_similarity_and_loss_equal_their_formulas():
    qf = F.normalize(torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-1.0, 0.0]]]), dim=-1)   # [2 img, 2 q, 2]
    tf = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)                            # [2 txt, 2]
    sim = itc_similarity(qf, tf)
    expected = torch.tensor([[max(1.0, 0.6), max(0.0, 0.8)], [max(0.0, -1.0), max(1.0, 0.0)]])
    torch.testing.assert_close(sim, expected)
    t, eps = 0.1, 0.1
    loss = itc_loss(sim, t, label_smoothing=eps)

    def ce(row, target):   # label-smoothed cross-entropy written out
        logp = torch.log_softmax(row / t, dim=0)
        return -((1 - eps) * logp[target] + eps * logp.mean())
    by_hand = (sum(ce(sim[i], i) for i in range(2)) + sum(ce(sim[:, j], j) for j in range(2))) / 4
    torch.testing.assert_close(loss, by_hand)


def test_itg_loss_equals_shifted_cross_entropy():
    logits = torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[6, 1, 2, 3], [6, 4, 5, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    terms = [F.cross_entropy(logits[b, t][None], ids[b, t + 1][None])
             for b in range(2) for t in range(3) if mask[b, t + 1]]
    torch.testing.assert_close(itg_loss(logits, ids, mask, label_smoothing=0.0), torch.stack(terms).mean())


def test_hard_negatives_never_pick_the_positive():
    sim = torch.randn(5, 5, generator=torch.Generator().manual_seed(0)) * 10
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg_t, neg_i = hard_negatives(sim, g)
        assert (neg_t != torch.arange(5)).all() and (neg_i != torch.arange(5)).all()
    sharp = torch.full((3, 3), -30.0)
    sharp[0, 2] = sharp[2, 1] = sharp[1, 0] = 30.0                        # the hardest negative dominates
    neg_t, _ = hard_negatives(sharp, g)
    assert neg_t.tolist() == [2, 0, 1]
    with pytest.raises(InputError, match="at least 2"):
        hard_negatives(torch.zeros(1, 1))


def test_stage1_losses_match_their_parts_and_itm_formula():
    model = _pretraining().eval()
    ids, mask = _text(B=3)
    ids[:, 0] = model.cls_token_id
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out = model(pixels, ids, mask, generator=torch.Generator().manual_seed(0))
        # ITM by hand: the same negatives, the bidirectional mask, mean over queries
        neg_t, neg_i = hard_negatives(out.sim / model.itc.temperature(), torch.Generator().manual_seed(0))
        image = model.image_embeds(pixels)
        ids3 = torch.cat([ids, ids[neg_t], ids])
        mask3 = torch.cat([mask, mask[neg_t], mask])
        h = model.qformer(torch.cat([image, image, image[neg_i]]), input_ids=ids3,
                          mask=qformer_mask("bidirectional", Q, mask3))
        logits = model.itm_head(h[:, :Q]).mean(1)
        itm = F.cross_entropy(logits, torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0]))
    torch.testing.assert_close(out.loss_itm, itm)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itg + out.loss_itm)
    assert out.loss_itg > 0 and out.loss_itc > 0
    bad = ids.clone()
    bad[:, 0] = 0
    with pytest.raises(InputError, match=r"\[CLS\]"):
        model(pixels, bad, mask)


def test_stage1_checkpoint_round_trip(tmp_path):
    model = _pretraining()
    ocellus.save(model, tmp_path)
    again = ocellus.load(tmp_path)
    assert isinstance(again, QFormerPretraining)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_a_few_steps_on_shapes_captions_lower_the_sum():
    """Q-Former (+ heads) trains, the ViT is frozen; 25 steps of AdamW on shapes captions."""
    from ocellus.data.bpe import train_bpe
    from ocellus.data.shapes import ShapesConfig, sample_at
    from ocellus.train.qformer_objectives import caption_dataset
    from ocellus.train.recipe_data import image_config
    cfg = ShapesConfig(seed=0, image_size=48, max_objects=2)
    texts = [p["text"] for i in range(200) for m in sample_at(cfg, i, "caption")["messages"] for p in m["content"]
             if p.get("type") == "text"]
    tok = train_bpe(texts, 320)
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig.clip(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                           num_layers=1, num_heads=2)).requires_grad_(False)
    qcfg = QFormerConfig(num_query_tokens=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1,
                         text_input=True, vocab_size=len(tok) + 2, max_position_embeddings=64)
    model = QFormerPretraining(vit, QFormer(qcfg), embed_dim=16)
    data, collate = caption_dataset({"source": "shapes", "max_length": 48}, 64, tok, model, cfg, image_config(32))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(25):
        batch = collate([data[(step * 8 + j) % len(data)] for j in range(8)])
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
