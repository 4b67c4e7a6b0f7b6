"""PPO: GAE against a hand-computed example, the clipped policy and value losses, per-token KL-penalised
rewards, whitening, and one actor-critic step on the embedded tiny LLaVA."""
import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.train.grpo import clipped_surrogate
from ocellus.train.ppo import PPOConfig, gae, token_rewards, value_loss, whiten

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])            # row 1 ends after two tokens: 5.0 and 9.0 are padding
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: d2 = 1 - 0.7 = 0.3; d1 = 0.9*0.7 - 0.6 = 0.03; d0 = 0.9*0.6 - 0.5 = 0.04
    #        A2 = 0.3; A1 = 0.03 + 0.72*0.3 = 0.246; A0 = 0.04 + 0.72*0.246 = 0.21712
    # row 1: d1 = 1 - 0.4 = 0.6 (V after the last token is 0); d0 = 0.9*0.4 - 0.2 = 0.16; A0 = 0.16 + 0.72*0.6
    assert adv.tolist()[0] == pytest.approx([0.21712, 0.246, 0.3])
    assert adv.tolist()[1] == pytest.approx([0.592, 0.6, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.71712, 0.846, 1.0])
    assert ret.tolist()[1] == pytest.approx([0.792, 1.0, 0.0])


def test_gae_with_gamma_lambda_one_is_monte_carlo():
    torch.manual_seed(0)
    r, v, mask = torch.randn(3, 5), torch.randn(3, 5), torch.ones(3, 5)
    adv, ret = gae(r, v, mask, 1.0, 1.0)
    to_go = r.flip(-1).cumsum(-1).flip(-1)                  # sum of rewards from t to the end
    assert torch.allclose(adv, to_go - v, atol=1e-6) and torch.allclose(ret, to_go, atol=1e-6)


def test_clipped_value_loss_by_hand():
    mask = torch.ones(1, 2)
    # V = 2 moved from V_old = 1 past the 0.2 clip: max((2-3)^2, (1.2-3)^2) = 3.24; second token inside: (1.1-1)^2
    loss = value_loss(torch.tensor([[2.0, 1.1]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 1.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * (3.24 + 0.01) / 2)


def test_policy_loss_is_the_clipped_surrogate_with_token_advantages():
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), 0.2)
    assert loss.tolist()[0] == pytest.approx([-2.4, 0.8]) and clipped.all()


def test_token_rewards_put_the_score_on_the_last_token_and_penalise_kl():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    r, kl = token_rewards(torch.tensor([1.0, 2.0]), logp, ref, mask, kl_coef=0.1)
    assert kl.tolist() == [[0.5, -1.0, 0.0], [0.0, 0.0, 0.0]]
    assert r.tolist()[0] == pytest.approx([-0.05, 0.1 + 1.0, 0.0]) and r.tolist()[1] == pytest.approx([2.0, 0, 0])


def test_whiten_and_config():
    x, mask = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
    w = whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6) and (real ** 2).mean().item() == pytest.approx(1.0, 1e-4)
    assert w[0, 2].item() == 0.0
    # epsilon and max_new_tokens: OnPolicyConfig's checks, which GRPOConfig shares
    for bad in ({"gamma": 1.5}, {"ppo_epochs": 0}, {"kl_coef": -1}, {"epsilon": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ConfigError):
            PPOConfig(**bad)


def test_one_actor_critic_step():
    import copy

    import ocellus
    from ocellus.data.shapes import ShapesConfig
    from ocellus.train.ppo import PPO
    from ocellus.train.preference import prompt_row, shapes_prompt
    from ocellus.train.reward_model import RewardModel
    from ocellus.train.rewards import count_reward
    d = ocellus.default_model_dir()
    policy, proc = ocellus.load(d), ocellus.load_processor(d)
    policy.vision_tower.requires_grad_(False)
    critic = RewardModel(copy.deepcopy(policy))
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3) for m in (policy, critic)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for o in opts]
    cfg = ShapesConfig(image_size=48, seed=32, qa_weights=(("count", 1.0),))
    rows = [prompt_row(shapes_prompt(cfg, i), i) for i in range(2)]
    before = [p.detach().clone() for p in critic.score.parameters()]
    record = PPO(policy, critic, proc, [count_reward], PPOConfig(max_new_tokens=3, ppo_epochs=1), opts, scheds).step(rows)
    assert set(record) >= {"reward", "kl", "pg_loss", "vf_loss", "clip_ratio"} and record["vf_loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.score.parameters()))   # the critic learned
