"""PPO, one real PPO.step (Schulman et al. 2017; the RLHF form of Ziegler et al. 2019 / Ouyang et al. 2022)
on fixed completions of the tiny decoder, against the whole update written out here:
    r_t   = -kl_coef (log pi_old(y_t) - log pi_REF(y_t)), + the score s on each completion's last token
    GAE   delta_t = r_t + gamma V(t+1) - V(t),  A_t = delta_t + gamma lambda A_{t+1},  V = 0 past the end;
          R_t = A_t + V(t); A whitened to mean 0, std 1 over the valid tokens of the batch
    loss  token-mean of -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)
          + vf_coef 0.5 token-mean max((V - R)^2, (V_old + clamp(V - V_old, +-value_eps) - R)^2)
ppo_epochs = 2 of SGD on actor and critic: both models' parameters must equal the hand computation. The
reference is another model than the policy (a KL against the current policy would be 0), eps differs from
value_eps, the completions have padding (whitening / means over padding would show), and the second
epoch clips both the ratio and the value."""
import copy

import pytest
import torch

from ocellus.train.ppo import PPO, PPOConfig
from ocellus.train.reward_model import RewardModel
from _posttrain_hand import hand_token_logps, prompt_rows, stub_rollout
from _posttrain_tiny import tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12]]
COMPLETIONS = [[20, 21, 1], [22, 23, 24, 25, 1], [26, 1]]
TEXTS = ["a", "b", "c"]
SCORES = {"a": 1.0, "b": -0.5, "c": 2.0}
CFG = PPOConfig(max_new_tokens=5, temperature=1.0, kl_coef=0.3, gamma=0.9, lam=0.8, epsilon=0.1,
                value_epsilon=0.02, vf_coef=0.5, ppo_epochs=2)


def score(prompts, completions, **_):
    return [SCORES[c] for c in completions]


def hand_values(critic, batch):
    """V(s_t): the head on the final hidden state of the token BEFORE completion token t -> [B, C]."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    h = critic.backbone(**inputs).hidden_states                               # [B, P + C, D]
    C = batch["completion_mask"].shape[1]
    P = batch["input_ids"].shape[1] - C
    v = h[:, P - 1:P - 1 + C] @ critic.score.weight[0] + critic.score.bias     # [B, C]
    return v * batch["completion_mask"]


def hand_gae(rewards, values, lengths):
    adv = torch.zeros_like(rewards)
    for b, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1] if t + 1 < n else 0.0
            delta = rewards[b, t] + CFG.gamma * next_v - values[b, t]
            running = delta + CFG.gamma * CFG.lam * running
            adv[b, t] = running
    return adv, adv + values                                                  # 0 on padding


def test_one_ppo_step_equals_the_hand_update(monkeypatch):
    import ocellus.train.ppo as ppo_module
    sampler, batch = stub_rollout(PROMPTS, COMPLETIONS, TEXTS)
    monkeypatch.setattr(ppo_module, "sample_completions", sampler)
    policy, reference = tiny_decoder(seed=0), tiny_decoder(seed=1)
    critic = RewardModel(tiny_decoder(seed=2))
    hand_policy, hand_critic = copy.deepcopy(policy), copy.deepcopy(critic)
    lr_a, lr_c = 0.02, 0.5
    opts = [torch.optim.SGD(policy.parameters(), lr=lr_a), torch.optim.SGD(critic.parameters(), lr=lr_c)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for o in opts]
    record = PPO(policy, critic, None, [score], CFG, opts, scheds, clip_grad_norm=None,
                 reference=reference).step(prompt_rows(3))

    mask = batch["completion_mask"].float()                                   # [B, C]
    lengths = [len(c) for c in COMPLETIONS]
    valid = mask.bool()
    with torch.no_grad():
        old = hand_token_logps(hand_policy, batch)
        ref = hand_token_logps(reference, batch)
        old_v = hand_values(hand_critic, batch)
    rewards = -CFG.kl_coef * (old - ref) * mask
    for b, n in enumerate(lengths):
        rewards[b, n - 1] += SCORES[TEXTS[b]]
    adv, returns = hand_gae(rewards, old_v, lengths)
    a = adv[valid]
    adv = (adv - a.mean()) / (a.var(unbiased=False) + 1e-8).sqrt() * mask     # whitened over valid tokens
    assert adv[valid].mean().abs() < 1e-5 and adv[valid].std(unbiased=False) == pytest.approx(1.0, abs=1e-4)

    clipped_ratio = clipped_value = in_band = False
    for _ in range(CFG.ppo_epochs):
        logp, v = hand_token_logps(hand_policy, batch), hand_values(hand_critic, batch)
        ratio = torch.exp(logp - old)
        pg = -torch.min(ratio * adv, torch.clamp(ratio, 1 - CFG.epsilon, 1 + CFG.epsilon) * adv)
        v_clip = old_v + torch.clamp(v - old_v, -CFG.value_epsilon, CFG.value_epsilon)
        vf = 0.5 * torch.max((v - returns) ** 2, (v_clip - returns) ** 2)
        loss = pg[valid].mean() + CFG.vf_coef * vf[valid].mean()
        def clips(e):                                # where min() takes the clipped term for range e
            return ((adv > 0) & (ratio > 1 + e) | (adv < 0) & (ratio < 1 - e)) & valid
        clipped_ratio |= bool(clips(CFG.epsilon).any())
        in_band |= bool((clips(CFG.value_epsilon) & ~clips(CFG.epsilon)).any())   # clipped only at the wrong range
        clipped_value |= bool(((v - old_v).abs() > CFG.value_epsilon)[valid].any())
        params = [*hand_policy.parameters(), *hand_critic.parameters()]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                if g is not None:
                    p -= (lr_a if i < len(list(hand_policy.parameters())) else lr_c) * g
    assert clipped_ratio and in_band and clipped_value                        # both clips are exercised
    assert record["reward"] == pytest.approx(sum(SCORES.values()) / 3)
    assert record["kl"] == pytest.approx(((old - ref) * mask).sum(-1).mean().item(), abs=1e-5)
    for model, hand in ((policy, hand_policy), (critic, hand_critic)):
        for (name, p), q in zip(model.named_parameters(), hand.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), atol=1e-5, rtol=1e-4, msg=name)
