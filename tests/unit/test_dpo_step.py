"""DPO, one real step against the paper (Rafailov et al. 2023, eq. 7) written out here:
    loss = -log sigma(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])
with log pi(y) = sum over the COMPLETION tokens only of log softmax(logits at t - 1)[token t] (prompt and
padding excluded). The policy and the reference differ (another seed), so a loss that used the policy as its
own reference, or the reference's gradient, would show. One SGD step of the objective = the hand gradient."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.train.dpo import DPO, DPOConfig
from _posttrain_tiny import text_batch, tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 6, 7], [8, 9]]
CHOSEN, REJECTED = [[20, 21, 22, 1], [23, 1]], [[30, 1], [31, 32, 33, 1]]
BETA = 0.3


def hand_sequence_logps(model, batch, completions):
    """sum_t log pi(y_t | x, y_<t) over each completion's own tokens (its end token included)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logprobs = F.log_softmax(model(**inputs).logits.float(), -1)             # [2B, P + C, V]
    P = batch["input_ids"].shape[1] - batch["completion_mask"].shape[1]
    out = []
    for i, ids in enumerate(completions):
        out.append(sum(logprobs[i, P + j - 1, tok] for j, tok in enumerate(ids)))   # position t-1 predicts t
    return torch.stack(out)                                                  # [2B]


def test_one_dpo_step_is_the_papers_loss_and_gradient():
    batch = text_batch(PROMPTS * 2, CHOSEN + REJECTED)
    policy, reference = tiny_decoder(seed=0), tiny_decoder(seed=1)
    dpo = DPO(policy, reference, DPOConfig(beta=BETA))
    ref_before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    start = {n: p.detach().clone() for n, p in policy.named_parameters()}
    out = dpo(**batch)

    # by hand: the four sequence log-probs, the margin h, the loss
    pi = hand_sequence_logps(policy, batch, CHOSEN + REJECTED)
    with torch.no_grad():
        ref = hand_sequence_logps(reference, batch, CHOSEN + REJECTED)
    h = (pi[:2] - ref[:2]) - (pi[2:] - ref[2:])                               # [B]
    loss = -F.logsigmoid(BETA * h).mean()
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=1e-5)
    assert out.metrics["rewards/chosen"] == pytest.approx((BETA * (pi[:2] - ref[:2])).mean().item(), abs=1e-6)
    assert out.metrics["rewards/rejected"] == pytest.approx((BETA * (pi[2:] - ref[2:])).mean().item(), abs=1e-6)

    # the gradient: d loss / d theta of the policy, by autograd on the hand loss
    params = list(policy.parameters())
    hand = torch.autograd.grad(loss, params)
    lr = 0.1
    opt = torch.optim.SGD(dpo.parameters(), lr=lr)
    out.loss.backward()
    assert all(p.grad is None for p in reference.parameters())               # frozen: no gradient
    opt.step()
    for (name, p), g in zip(policy.named_parameters(), hand):
        torch.testing.assert_close(p.detach(), start[name] - lr * g, atol=1e-6, rtol=1e-5, msg=name)
    for name, p in reference.named_parameters():
        assert torch.equal(p, ref_before[name]), name                        # the reference never moves
    assert not any(n.startswith("_reference") or n.startswith("reference") for n, _ in dpo.named_parameters())


def test_padding_and_prompt_tokens_do_not_count():
    """The same pair scored alone (no padding) and inside a padded batch gives the same per-pair loss; a
    different prompt token changes the context but never enters the sum as a scored token."""
    policy, reference = tiny_decoder(seed=0), tiny_decoder(seed=1)
    dpo = DPO(policy, reference, DPOConfig(beta=BETA))
    batch = text_batch(PROMPTS * 2, CHOSEN + REJECTED)
    logps = dpo.sequence_logps(policy, batch)                                 # [2B]
    torch.testing.assert_close(logps, hand_sequence_logps(policy, batch, CHOSEN + REJECTED), atol=1e-5, rtol=1e-5)
    alone = text_batch([PROMPTS[1]] * 2, [CHOSEN[1], REJECTED[1]])
    torch.testing.assert_close(dpo.sequence_logps(policy, alone), logps[[1, 3]], atol=1e-5, rtol=1e-5)
