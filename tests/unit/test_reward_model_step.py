"""Reward model, one real step: r(x, y) is the head on the final hidden state of the completion's LAST token
(its end token, before any padding), the loss is Bradley-Terry -log sigma(r_w - r_l) (Ouyang et al. 2022,
eq. 1), and one Trainer step moves every parameter by a hand-computed AdamW step on that loss."""
import copy

import pytest
import torch
import torch.nn.functional as F

from ocellus.train.reward_model import RewardModel
from _posttrain_tiny import text_batch, tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 6, 7], [8, 9]]
CHOSEN, REJECTED = [[20, 21, 22, 1], [23, 1]], [[30, 1], [31, 32, 33, 1]]   # lengths differ: padding on both sides


def _pairs():
    return text_batch(PROMPTS * 2, CHOSEN + REJECTED)                        # 2B rows: B chosen, then B rejected


def _hand_rewards(backbone, w, b, batch):
    """Run the backbone on the whole sequence and read the state at each completion's end token."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    h = backbone(**inputs).hidden_states                                     # [2B, P + C, D]
    P = batch["input_ids"].shape[1] - batch["completion_mask"].shape[1]
    lengths = [len(c) for c in CHOSEN + REJECTED]
    states = torch.stack([h[i, P + n - 1] for i, n in enumerate(lengths)])   # [2B, D]: the end token of row i
    return states @ w.T.squeeze(-1) + b                                      # [2B]


def test_rewards_pool_the_end_token_and_ignore_padding():
    torch.manual_seed(0)
    rm = RewardModel(tiny_decoder()).eval()
    batch = _pairs()
    r = rm.rewards(batch)
    torch.testing.assert_close(r, _hand_rewards(rm.backbone, rm.score.weight, rm.score.bias, batch), atol=1e-5,
                               rtol=1e-5)
    alone = rm.rewards(text_batch([PROMPTS[1]], [REJECTED[1]]))             # no padding at all
    torch.testing.assert_close(r[3:], alone, atol=1e-5, rtol=1e-5)
    out = rm(**batch)
    torch.testing.assert_close(out.loss, -F.logsigmoid(r[:2] - r[2:]).mean())   # chosen minus rejected
    assert out.metrics["accuracy"] == ((r[:2] > r[2:]).float().mean().item())


def test_one_trainer_step_is_a_hand_adamw_step_on_the_bradley_terry_loss(tmp_path):
    from ocellus.train.loader import BatchLoader
    from ocellus.train.trainer import TrainConfig, Trainer
    torch.manual_seed(0)
    rm = RewardModel(tiny_decoder())
    start = copy.deepcopy(rm)
    batch = _pairs()
    lr, head_lr, wd = 1e-3, 1e-2, 0.05
    cfg = TrainConfig(max_steps=1, lr=lr, weight_decay=wd, clip_grad_norm=None, out_dir=str(tmp_path),
                      progress=False, stage={"llm": "full", "head": {"mode": "full", "lr": head_lr}})
    Trainer(rm, BatchLoader([batch], 1, lambda r: r[0], seed=0), cfg).train_step()

    # by hand, on the start copy: rewards at the end tokens, BT loss, gradients, AdamW's first step
    params = dict(start.named_parameters())
    r = _hand_rewards(start.backbone, start.score.weight, start.score.bias, batch)
    loss = -F.logsigmoid(r[:2] - r[2:]).mean()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    moved = 0
    for name, p in rm.named_parameters():
        g, p0 = grads[name], params[name].detach()
        if g is None:                          # not on the reward's path (lm_head): no gradient, AdamW skips it
            torch.testing.assert_close(p.detach(), p0, msg=name)
            continue
        step_lr = head_lr if name.startswith("score.") else lr
        decay = wd if p0.dim() >= 2 and "norm" not in name else 0.0
        # AdamW step 1 (bias-corrected m = g, v = g^2): p (1 - lr wd) - lr g / (|g| + eps)
        expected = p0 * (1 - step_lr * decay) - step_lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, atol=2e-6, rtol=1e-5, msg=name)
        moved += not torch.equal(p.detach(), p0)
    assert moved > 10
