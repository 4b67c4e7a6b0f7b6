"""The contrastive losses against the formulas their papers state: InfoNCE = cross-entropy over the
similarity logits with the diagonal as targets (both directions); SigLIP's sigmoid loss over +1/-1
labels; positives by id (duplicate captions are not negatives); the temperature clamp; a batch of
one; and the dual encoder's forward loss equals the formula on its own logits."""
import math

import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.models.contrastive.losses import (MAX_LOGIT_SCALE, contrastive_loss, info_nce, logit_scale_value,
                                               sigmoid_loss)


def _logits(n=5, seed=0):
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed)) * 3


def test_info_nce_is_cross_entropy_with_diagonal_targets():
    s = _logits()
    # written out: -log softmax of the diagonal, per row (image->text) and per column (text->image)
    i2t = -torch.stack([s[i, i] - torch.logsumexp(s[i], 0) for i in range(5)]).mean()
    t2i = -torch.stack([s[i, i] - torch.logsumexp(s[:, i], 0) for i in range(5)]).mean()
    torch.testing.assert_close(info_nce(s), (i2t + t2i) / 2)
    # and it is not symmetric in a trivial way: transposing a non-symmetric matrix keeps the value
    torch.testing.assert_close(info_nce(s.t()), info_nce(s))


def test_info_nce_perfect_and_uniform_limits():
    n = 6
    assert info_nce(torch.eye(n) * 1000).item() == pytest.approx(0.0, abs=1e-6)      # certain and right
    assert info_nce(torch.zeros(n, n)).item() == pytest.approx(math.log(n), rel=1e-6)  # knows nothing


def test_info_nce_with_distinct_ids_equals_plain():
    s = _logits()
    torch.testing.assert_close(info_nce(s, ids=torch.arange(5) * 7), info_nce(s))


def test_duplicate_captions_are_positives_not_negatives():
    """Pairs 0 and 2 share an id (the same caption): each image's target is spread over both texts."""
    s = _logits()
    ids = torch.tensor([4, 1, 4, 2, 3])
    pos = (ids[:, None] == ids[None]).float()
    target = pos / pos.sum(1, keepdim=True)
    expect = (-(F.log_softmax(s, 1) * target).sum(1).mean() - (F.log_softmax(s.t(), 1) * target).sum(1).mean()) / 2
    got = info_nce(s, ids)
    torch.testing.assert_close(got, expect)
    assert not torch.allclose(got, info_nce(s))          # the plain loss would push 0 and 2 apart
    # gradient: raising the logit of a duplicate pair (image 0, text 2) lowers the id-aware loss
    s2 = s.clone().requires_grad_()
    info_nce(s2, ids).backward()
    assert s2.grad[0, 2] < 0
    s3 = s.clone().requires_grad_()
    info_nce(s3).backward()
    assert s3.grad[0, 2] > 0                             # plain InfoNCE treats it as a negative


def test_batch_of_one_is_an_error_for_info_nce_not_for_sigmoid():
    with pytest.raises(InputError, match="at least 2"):
        info_nce(torch.tensor([[3.0]]))
    z = torch.tensor([[3.0]])
    torch.testing.assert_close(sigmoid_loss(z), -F.logsigmoid(z).sum())


def test_all_same_id_leaves_no_negatives():
    with pytest.raises(InputError, match="no negatives"):
        info_nce(_logits(3), ids=torch.tensor([1, 1, 1]))


def test_sigmoid_loss_formula():
    """SigLIP Algorithm 1: labels = 2 * eye - 1; loss = -sum(log_sigmoid(labels * logits)) / n."""
    s = _logits(4)
    expect = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            expect += -math.log(1 / (1 + math.exp(-z * s[i, j].item())))
    assert sigmoid_loss(s).item() == pytest.approx(expect / 4, rel=1e-5)
    ids = torch.tensor([0, 1, 0, 2])                     # ids: (0, 2) and (2, 0) become positives
    labels = torch.tensor([[1, -1, 1, -1], [-1, 1, -1, -1], [1, -1, 1, -1], [-1, -1, -1, 1]], dtype=torch.float)
    torch.testing.assert_close(sigmoid_loss(s, ids), -F.logsigmoid(labels * s).sum() / 4)


def test_non_square_logits_are_an_error():
    with pytest.raises(InputError, match="square"):
        info_nce(torch.zeros(3, 4))
    with pytest.raises(InputError, match="square"):
        sigmoid_loss(torch.zeros(3, 4))


def test_temperature_is_clamped_so_it_never_reaches_zero():
    big = torch.tensor(10.0, requires_grad=True)          # exp(10) = 22026 unclamped
    scale = logit_scale_value(big)
    assert scale.item() == MAX_LOGIT_SCALE                # temperature 1/scale >= 0.01
    scale.backward()
    assert big.grad.item() == 0.0                         # and the optimizer cannot push it further
    small = torch.tensor(math.log(20.0), requires_grad=True)
    assert logit_scale_value(small).item() == pytest.approx(20.0)
    # through the loss: log-scale 10 and log-scale ln(100) give the same loss
    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    torch.testing.assert_close(contrastive_loss(img, txt, torch.tensor(10.0)),
                               contrastive_loss(img, txt, torch.tensor(math.log(100.0))))


def test_contrastive_loss_matches_formula_with_bias():
    img, txt = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    t, b = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    torch.testing.assert_close(contrastive_loss(img, txt, t, b, kind="sigmoid"), sigmoid_loss(10 * img @ txt.t() - 10))
    torch.testing.assert_close(contrastive_loss(img, txt, t), info_nce(10 * img @ txt.t()))
    with pytest.raises(InputError, match="kind"):
        contrastive_loss(img, txt, t, kind="triplet")


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoder_forward_loss(kind):
    """DualEncoder(return_loss=True) trains with its family's loss on its own logits (transformers'
    CLIP/SigLIP losses are the same formulas)."""
    from contrastive_tiny import tiny_dual_encoder
    model = tiny_dual_encoder(kind)
    ids = torch.randint(3, 40, (4, 6))
    ids[:, -1] = model.text_model.config.eos_token_id
    out = model(input_ids=ids, pixel_values=torch.randn(4, 3, 16, 16), return_loss=True)
    expect = info_nce(out.logits_per_image) if kind == "clip" else sigmoid_loss(out.logits_per_image)
    torch.testing.assert_close(out.loss, expect)
    out.loss.backward()
    assert model.logit_scale.grad is not None and model.vision_model.embeddings.position_embedding.weight.grad.abs().sum() > 0
