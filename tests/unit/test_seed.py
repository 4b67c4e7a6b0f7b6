"""SEED tokenizer: causal queries, 1-D codes, the contrastive term, embedding reconstruction trains."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.unified.seed import SeedTokenizer, causal_query_mask
from ocellus.models.vision.vit import ViTConfig, VisionTransformer


def tiny(q=4, seed=0):
    torch.manual_seed(seed)
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=1,
                                      num_heads=2))
    qf = QFormer(QFormerConfig(num_query_tokens=q, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1))
    return SeedTokenizer(vit, qf, num_codes=16, code_dim=8, embed_dim=12)


def test_causal_mask_pattern():
    assert causal_query_mask(3)[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


@pytest.mark.parametrize("q", [3, 5])
def test_query_i_never_sees_later_queries(q):
    m = tiny(q).eval()
    px = torch.rand(2, 3, 16, 16) * 2 - 1
    base = m.queries(px)
    with torch.no_grad():
        m.qformer.query_tokens[:, -1] += 1.0                                # change only the last query
    moved = (m.queries(px) - base).abs().amax(-1)                           # [B, Q]
    assert (moved[:, :-1] == 0).all() and (moved[:, -1] > 0).all()


def test_codes_are_a_1d_sequence_and_decode_to_an_embedding():
    m = tiny().eval()
    codes = m.encode(torch.rand(3, 3, 16, 16) * 2 - 1)
    assert codes.shape == (3, 4) and codes.min() >= 0 and codes.max() < 16
    assert m.decode_embedding(codes).shape == (3, 12)
    with pytest.raises(InputError, match=r"\[B, 4\]"):
        m.decode_embedding(codes[:, :2])


def test_contrastive_term_is_cross_entropy_over_last_query_similarities():
    m = tiny().eval()
    px, cap, img = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 12), torch.randn(4, 12)
    out = m(px, cap, img)
    last = F.normalize(m.contrast.proj(m.queries(px)[:, -1]), dim=-1)
    logits = m.contrast.log_scale.exp() * last @ F.normalize(cap, dim=-1).t()
    t = torch.arange(4)
    assert torch.allclose(out.contrastive, (F.cross_entropy(logits, t) + F.cross_entropy(logits.t(), t)) / 2, atol=1e-6)
    assert torch.allclose(out.loss, out.contrastive + out.quant.loss + out.reconstruction)


def test_training_lowers_the_loss_and_leaves_the_vit_frozen():
    m = tiny().train()
    g = torch.Generator().manual_seed(0)
    px = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    cap, img = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    vit_before = [p.clone() for p in m.vision.parameters()]
    losses = []
    for _ in range(40):
        loss = m(px, cap, img).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(torch.equal(a, b) for a, b in zip(vit_before, m.vision.parameters()))


def test_caption_width_may_differ_from_the_embedding_width_and_shapes_are_checked():
    torch.manual_seed(0)
    m = tiny()
    m = SeedTokenizer(m.vision, m.qformer, num_codes=16, code_dim=8, embed_dim=12, text_dim=20)
    px = torch.rand(3, 3, 16, 16) * 2 - 1
    assert m(px, torch.randn(3, 20), torch.randn(3, 12)).loss.isfinite()
    with pytest.raises(InputError, match="text_dim=20"):
        m(px, torch.randn(3, 12), torch.randn(3, 12))
    with pytest.raises(InputError, match="embed_dim=12"):
        m(px, torch.randn(3, 20), torch.randn(3, 20))


def test_equal_caption_ids_are_positives_of_each_other():
    from ocellus.models.contrastive.losses import info_nce
    m = tiny().eval()
    px, cap, img = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 12), torch.randn(4, 12)
    ids = torch.tensor([0, 1, 0, 2])
    out = m(px, cap, img, caption_ids=ids)
    logits = m.last_query_logits(px, cap)
    assert torch.allclose(out.contrastive, info_nce(logits, ids), atol=1e-6)
    assert not torch.allclose(out.contrastive, info_nce(logits), atol=1e-4)     # the ids change the loss


@pytest.mark.parametrize("bad, match", [
    (lambda c: c[:, :3], r"\[B, 4\]"),
    (lambda c: c.float(), "integer tensor"),
    (lambda c: c.clone().index_fill_(1, torch.tensor([2]), 16), "code 16 at row 0, position 2 is out of range"),
    (lambda c: c.clone().fill_(-1), "out of range"),
])
def test_bad_codes_are_typed_errors_naming_the_problem(bad, match):
    m = tiny().eval()
    codes = m.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    with pytest.raises(InputError, match=match):
        m.decode_embedding(bad(codes))


def test_stage_with_frozen_vision_trains_every_other_part():
    from ocellus.train.stages import apply_stage
    m = tiny()
    report = apply_stage(m, {p: ("frozen" if p == "vision" else "full") for p in m.parts()})
    assert report.counts["vision"][0] == 0
    assert all(t == n > 0 for p, (t, n) in report.counts.items() if p != "vision")
    covered = {id(q) for part in m.parts().values() for q in part.parameters()}
    assert covered == {id(q) for q in m.parameters()}          # every parameter belongs to a part
