"""GRPO, one real GRPO.step (Shao et al. 2024, eq. 3 with sec. 4.1.2's outcome supervision) on fixed
completions of the tiny decoder, against the objective written out here:
    A_i   = (r_i - mean(r of ITS group)) / (std(r of its group) + 1e-4)      (unbiased std, as TRL)
    ratio = exp(log pi - log pi_old),  L_t = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) + beta KL_t
    KL_t  = pi_ref / pi - log(pi_ref / pi) - 1  (k3, against the frozen reference)
    loss  = mean over completions of the mean over each completion's own tokens (padding excluded)
two policy iterations on one rollout (pi_old = the sampling policy), SGD: the parameters must equal the hand
computation. The groups' reward means differ (a batch-mean baseline would change every advantage) and the
second iteration is clipped."""
import copy

import pytest
import torch

from ocellus.train.grpo import GRPO, GRPOConfig
from _posttrain_hand import hand_token_logps, prompt_rows, stub_rollout
from _posttrain_tiny import tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")

G = 3
PROMPTS = [[5, 6, 7]] * G + [[8, 9]] * G
COMPLETIONS = [[20, 21, 1], [22, 1], [23, 24, 25, 26, 1], [27, 1], [28, 29, 1], [30, 31, 32, 1]]
TEXTS = ["a", "b", "c", "d", "e", "f"]
REWARDS = {"a": 1.0, "b": 0.0, "c": 0.5, "d": 3.0, "e": 5.0, "f": 3.5}      # group means 0.5 and 3.83


def reward(prompts, completions, **_):
    return [REWARDS[c] for c in completions]


def hand_advantages() -> torch.Tensor:
    out = []
    for g in range(len(TEXTS) // G):
        r = torch.tensor([REWARDS[t] for t in TEXTS[g * G:(g + 1) * G]])
        mean = r.sum() / G
        std = ((r - mean) ** 2).sum().div(G - 1).sqrt()
        out.append((r - mean) / (std + 1e-4))
    return torch.cat(out)                                                      # [N]


def test_one_grpo_step_equals_the_hand_objective(monkeypatch):
    import ocellus.train.grpo as grpo_module
    sampler, batch = stub_rollout(PROMPTS, COMPLETIONS, TEXTS)
    monkeypatch.setattr(grpo_module, "sample_completions", sampler)
    policy, reference = tiny_decoder(seed=0), tiny_decoder(seed=1)
    hand_policy = copy.deepcopy(policy)
    cfg = GRPOConfig(num_generations=G, max_new_tokens=5, temperature=0.7, epsilon=0.05, beta=0.2,
                     num_iterations=2)
    lr = 2.0
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    record = GRPO(policy, None, [reward], cfg, opt, sched, clip_grad_norm=None, reference=reference).step(
        prompt_rows(2))

    mask = batch["completion_mask"].float()                                   # [N, C]
    A = hand_advantages()[:, None]                                            # [N, 1]
    with torch.no_grad():
        old = hand_token_logps(hand_policy, batch, 0.7)
        ref = hand_token_logps(reference, batch, 0.7)
    clipped_any = False
    for _ in range(2):
        logp = hand_token_logps(hand_policy, batch, 0.7)
        ratio = torch.exp(logp - old)
        surrogate = torch.min(ratio * A, torch.clamp(ratio, 1 - 0.05, 1 + 0.05) * A)
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        per_token = -surrogate + 0.2 * kl
        loss = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
        clipped_any |= bool(((ratio - 1).abs() > 0.05)[mask.bool()].any())
        grads = torch.autograd.grad(loss, list(hand_policy.parameters()))
        with torch.no_grad():
            for p, g in zip(hand_policy.parameters(), grads):
                p -= lr * g
    assert clipped_any and record["clip_ratio"] > 0                           # the clip range is exercised
    assert record["reward"] == pytest.approx(sum(REWARDS.values()) / 6)
    for (name, p), q in zip(policy.named_parameters(), hand_policy.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-5, rtol=1e-4, msg=name)
