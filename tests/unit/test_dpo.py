"""DPO against the paper's formula on hand-computed log-probs, the implied-reward identity, IPO and
hinge, precomputed reference log-probs, and one optimisation step moving the margin the right way."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import ocellus
from ocellus.data.shapes import ShapesConfig
from ocellus.errors import ConfigError, InputError
from ocellus.train.dpo import DPO, DPOConfig, dpo_loss, reference_logps, sequence_logps
from ocellus.train.preference import collate_pairs, preference_pair, shapes_preference

pytestmark = pytest.mark.usefixtures("one_thread")

# two pairs of sequence log-probs: log pi(y_w), log pi(y_l), log pi_ref(y_w), log pi_ref(y_l)
C, R = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
RC, RR = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.0])
# h = (C - R) - (RC - RR) = [2.0 - 1.0, -0.5 + 1.0] = [1.0, 0.5]


def test_sigmoid_loss_is_the_papers_formula():
    losses, rc, rr = dpo_loss(C, R, RC, RR, beta=0.1)
    # eq. 7: -log sigma(beta log(pi(y_w)/pi_ref(y_w)) - beta log(pi(y_l)/pi_ref(y_l)))
    assert losses.tolist() == pytest.approx([0.6443966600735709, 0.6684596480132863], abs=1e-7)  # log(1+e^-0.1), ..-0.05
    assert rc.tolist() == pytest.approx([0.05, 0.0]) and rr.tolist() == pytest.approx([-0.05, -0.05])


def test_implied_reward_identity():
    torch.manual_seed(0)
    c, r, refc, refr = (torch.randn(16) for _ in range(4))
    for beta in (0.1, 0.5):
        losses, rc, rr = dpo_loss(c, r, refc, refr, beta=beta)
        assert torch.allclose(rc, beta * (c - refc)) and torch.allclose(rr, beta * (r - refr))
        # the loss is Bradley-Terry on the implied rewards r = beta log(pi / pi_ref)
        assert torch.allclose(losses, -F.logsigmoid(rc - rr), atol=1e-6)


def test_ipo_hinge_and_label_smoothing():
    ipo, _, _ = dpo_loss(C, R, RC, RR, beta=0.1, loss_type="ipo")
    assert ipo.tolist() == pytest.approx([(1.0 - 5.0) ** 2, (0.5 - 5.0) ** 2])        # (h - 1/(2 beta))^2
    hinge, _, _ = dpo_loss(C, R, RC, RR, beta=0.1, loss_type="hinge")
    assert hinge.tolist() == pytest.approx([0.9, 0.95])                               # max(0, 1 - beta h)
    far, _, _ = dpo_loss(C + 20, R, RC, RR, beta=0.1, loss_type="hinge")
    assert far.tolist() == [0.0, 0.0]
    smooth, _, _ = dpo_loss(C, R, RC, RR, beta=0.1, label_smoothing=0.2)
    x = 0.1
    assert smooth[0].item() == pytest.approx(0.8 * math.log1p(math.exp(-x)) + 0.2 * math.log1p(math.exp(x)))
    assert sequence_logps(torch.tensor([[-1.0, -3.0, 0.0]]), torch.tensor([[1, 1, 0]]), average=True).item() == -2.0
    with pytest.raises(ConfigError, match="loss_type"):
        DPOConfig(loss_type="kto")
    with pytest.raises(ConfigError, match="sigmoid loss only"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(InputError, match="one shape"):
        dpo_loss(C, R[:1], RC, RR)


@pytest.fixture(scope="module")
def pairs():
    d = ocellus.default_model_dir()
    proc = ocellus.load_processor(d)
    cfg = ShapesConfig(image_size=48, seed=11)
    return ocellus.load(d), proc, collate_pairs(proc)([preference_pair(shapes_preference(cfg, i), i) for i in range(3)])


def test_reference_copy_gives_log2_and_precomputed_reference_is_the_same(pairs):
    model, _, batch = pairs
    dpo = DPO.with_frozen_copy(copy.deepcopy(model))
    out = dpo(**batch)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert not any(n.startswith("_reference") for n, _ in dpo.named_parameters())       # not trained, not saved
    ref = reference_logps(dpo.reference, batch)
    no_ref = DPO(dpo.policy, None)
    assert no_ref(**batch, ref_logps=ref).loss.item() == pytest.approx(out.loss.item(), abs=1e-6)
    with pytest.raises(ConfigError, match="reference model or precomputed"):
        no_ref(**batch)
    with pytest.raises(InputError, match="even number"):
        dpo(**{k: v[:5] for k, v in batch.items()})


@pytest.mark.parametrize("loss_type, lr", [("sigmoid", 0.5), ("ipo", 0.005), ("hinge", 0.5)])
def test_one_step_raises_the_margin(loss_type, lr):
    from _posttrain_tiny import text_batch, tiny_decoder
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    chosen, rejected = [[20, 21, 1], [22, 1], [23, 24, 25, 1]], [[30, 1], [31, 32, 1], [33, 1]]
    batch = text_batch(prompts * 2, chosen + rejected)
    dpo = DPO.with_frozen_copy(tiny_decoder(), DPOConfig(beta=0.1, loss_type=loss_type))
    opt = torch.optim.SGD(dpo.parameters(), lr=lr)
    first = dpo(**batch)
    first.loss.backward()
    opt.step()
    after = dpo(**batch)
    assert after.metrics["rewards/margins"] > first.metrics["rewards/margins"] > -1e-6
    assert after.loss.item() < first.loss.item()
