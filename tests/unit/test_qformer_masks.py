"""BLIP-2 stage 1 (Li et al. 2023, sec. 3.2, fig. 2): each objective has its own self-attention mask over
[Q queries ; T text tokens]. The masks are built here by hand from the paper's rules and

  1. compared with `qformer_mask` entry by entry (padding included), and
  2. used to recompute ITC, ITM and ITG of ONE real forward of QFormerPretraining from the formulas:
     if the model ran any objective with another objective's mask, its loss differs from ours.

Rules (True = row token may attend column token):
  ITC  unimodal       query->query, text->text
  ITM  bidirectional  everything->everything
  ITG  causal         query->query, text->every query, text->text at positions <= its own
  padding text keys are seen by nobody but themselves.
"""
import pytest
import torch
import torch.nn.functional as F

from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.families.blip2.stage1 import QFormerPretraining, qformer_mask

Q, T, B, VOCAB, EPS = 3, 5, 3, 40, 0.1


def hand_mask(kind: str, text_mask: torch.Tensor) -> torch.Tensor:
    """The rule table above, one entry at a time -> bool [B, 1, Q+T, Q+T]."""
    n = Q + T
    out = torch.zeros(text_mask.shape[0], 1, n, n, dtype=torch.bool)
    for b in range(text_mask.shape[0]):
        for i in range(n):
            for j in range(n):
                qi, qj = i < Q, j < Q
                if kind == "unimodal":
                    ok = qi == qj
                elif kind == "bidirectional":
                    ok = True
                else:  # causal
                    ok = (qi and qj) or (not qi and qj) or (not qi and not qj and j <= i)
                if not qj and text_mask[b, j - Q] == 0 and i != j:
                    ok = False
                out[b, 0, i, j] = ok
    return out


def _text_mask():
    m = torch.ones(B, T, dtype=torch.long)
    m[1, 3:] = 0                                          # row 1: two padding tokens
    m[2, 4:] = 0
    return m


@pytest.mark.parametrize("kind", ["unimodal", "bidirectional", "causal"])
def test_each_mask_is_the_papers_rule_table(kind):
    """qformer_mask(kind) == the hand-built table; and the three tables differ pairwise, so swapping
    one mask for another can never pass this test."""
    tm = _text_mask()
    assert torch.equal(qformer_mask(kind, Q, tm), hand_mask(kind, tm))
    others = [k for k in ("unimodal", "bidirectional", "causal") if k != kind]
    assert all(not torch.equal(hand_mask(kind, tm), hand_mask(o, tm)) for o in others)


def _model():
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig.clip(image_size=16, patch_size=8, hidden_size=24, intermediate_size=48,
                                           num_layers=1, num_heads=2))
    qf = QFormer(QFormerConfig(num_query_tokens=Q, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, encoder_hidden_size=24, cross_attention_frequency=1,
                               text_input=True, vocab_size=VOCAB, max_position_embeddings=16))
    return QFormerPretraining(vit, qf, embed_dim=16, label_smoothing=EPS).eval()


def _smoothed_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Label-smoothed cross-entropy per row: -(1-eps) log p_y - eps * mean_c log p_c -> [N]."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(1 - EPS) * logp.gather(-1, target[:, None])[:, 0] - EPS * logp.mean(-1)


def test_stage1_losses_equal_the_formulas_with_hand_built_masks(monkeypatch):
    """One forward of the project; ITC / ITM / ITG recomputed from the paper with hand masks.
    ITC: s(i,t) = max_q cos(z_iq, t_cls); symmetric smoothed CE of s / tau.
    ITM: 2-way head on the queries' outputs averaged; B positives, B (image, hard text), B (hard image, text).
    ITG: [DEC] replaces [CLS]; position t predicts token t+1; padding targets skipped."""
    model = _model()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB - 2, (B, T), generator=g)
    ids[:, 0] = model.cls_token_id
    tm = _text_mask()
    pixels = torch.randn(B, 3, 16, 16, generator=g)
    picked = {}
    import ocellus.models.families.blip2.stage1 as qo
    real = qo.hard_negatives

    def spy(sim, generator=None):                          # record the negatives the model drew
        picked["neg"] = real(sim, generator)
        return picked["neg"]
    monkeypatch.setattr(qo, "hard_negatives", spy)
    with torch.no_grad():
        out = model(pixels, ids, tm, generator=torch.Generator().manual_seed(0))
    neg_t, neg_i = picked["neg"]
    assert (neg_t != torch.arange(B)).all() and (neg_i != torch.arange(B)).all()

    with torch.no_grad():
        image = model.vision_tower(pixels).last_hidden_state                          # [B, S, Dv]
        tau = model.itc.temp.clamp(0.001, 0.5)
        # ITC with the unimodal table
        h = model.qformer(image, input_ids=ids, mask=hand_mask("unimodal", tm))       # [B, Q+T, D]
        z = F.normalize(model.itc.vision_proj(h[:, :Q]), dim=-1)                      # [B, Q, E]
        t_cls = F.normalize(model.itc.text_proj(h[:, Q]), dim=-1)                     # [B, E]
        sim = torch.stack([torch.stack([(z[i] @ t_cls[t]).max() for t in range(B)]) for i in range(B)])  # [B, B]
        target = torch.arange(B)
        itc = (_smoothed_ce(sim / tau, target).mean() + _smoothed_ce(sim.t() / tau, target).mean()) / 2
        # ITM with the bidirectional table
        ids3 = torch.cat([ids, ids[neg_t], ids])
        tm3 = torch.cat([tm, tm[neg_t], tm])
        img3 = torch.cat([image, image, image[neg_i]])
        h3 = model.qformer(img3, input_ids=ids3, mask=hand_mask("bidirectional", tm3))
        itm_logits = model.itm_head(h3[:, :Q]).mean(1)                                # [3B, 2]
        itm = F.cross_entropy(itm_logits, torch.tensor([1] * B + [0] * 2 * B))
        # ITG with the causal table
        dec = ids.clone()
        dec[:, 0] = model.dec_token_id
        hg = model.qformer(image, input_ids=dec, mask=hand_mask("causal", tm))
        logits = model.lm_head(hg[:, Q:])                                             # [B, T, V]
        rows = [(b, t) for b in range(B) for t in range(T - 1) if tm[b, t + 1]]
        itg = _smoothed_ce(torch.stack([logits[b, t] for b, t in rows]),
                           torch.tensor([int(dec[b, t + 1]) for b, t in rows])).mean()
    torch.testing.assert_close(out.sim, sim)
    torch.testing.assert_close(out.loss_itc, itc)
    torch.testing.assert_close(out.loss_itm, itm)
    torch.testing.assert_close(out.loss_itg, itg)
    torch.testing.assert_close(out.loss, itc + itm + itg)


def test_the_check_can_fail_each_objective_reads_its_mask():
    """Sanity of the test above: on this model each objective's value changes with the mask, so a
    swapped mask cannot slip through by coincidence."""
    model = _model()
    ids = torch.randint(0, VOCAB - 2, (B, T), generator=torch.Generator().manual_seed(3))
    tm = _text_mask()
    image = torch.randn(B, 4, 24)
    with torch.no_grad():
        outs = {k: model.qformer(image, input_ids=ids, mask=hand_mask(k, tm)) for k in
                ("unimodal", "bidirectional", "causal")}
    for a in outs:
        for b in outs:
            if a < b:
                assert not torch.allclose(outs[a][:, :Q], outs[b][:, :Q]) or \
                    not torch.allclose(outs[a][:, Q:], outs[b][:, Q:]), (a, b)


def test_image_mask_hides_image_tokens_from_the_queries():
    """image_mask [B, S] (0 = padding): the queries' cross-attention reads only the real image tokens, so the
    output equals the one on the image without the masked tokens."""
    torch.manual_seed(0)
    cfg = QFormerConfig(num_query_tokens=Q, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, encoder_hidden_size=24, cross_attention_frequency=1)
    qformer = QFormer(cfg).eval()
    image = torch.randn(2, 7, 24) * 3
    keep = torch.ones(2, 7, dtype=torch.long)
    keep[:, 5:] = 0
    with torch.no_grad():
        masked = qformer(image, image_mask=keep)
        cut = qformer(image[:, :5])
        full = qformer(image)
    torch.testing.assert_close(masked, cut, atol=1e-5, rtol=1e-5)
    assert (masked - full).abs().max() > 1e-3       # the masked tokens did move the unmasked output
