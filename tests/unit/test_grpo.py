"""GRPO: group-normalised advantages (zero-std groups), the clipped ratio, the k3 KL estimator (>= 0,
unbiased on a toy distribution), the three token normalisations on a hand example, and a loop step
with a reward function that raises."""
import math

import pytest
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.train.grpo import GRPOConfig, aggregate, clipped_surrogate, group_advantages, grpo_loss, k3_kl

pytestmark = pytest.mark.usefixtures("one_thread")


def test_group_normalised_advantages_and_zero_std_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv, zero = group_advantages(rewards, 4)
    std = math.sqrt(4 * 0.25 / 3)                         # unbiased std of [1, 0, 0, 1]
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 2
    assert adv[:4].tolist() == pytest.approx([expected[0], expected[1], expected[1], expected[0]])
    assert adv[4:].tolist() == [0.0] * 4 and zero.tolist() == [False, True]   # all equal: no signal, no NaN
    unscaled, _ = group_advantages(rewards, 4, scale=False)                   # Dr. GRPO
    assert unscaled.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(InputError, match="prompts x 3"):
        group_advantages(rewards, 3)


def test_clipped_ratio_by_hand():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0]])
    loss, clipped = clipped_surrogate(logp, old, adv, 0.2)
    # ratio 1.5, A>0: min(1.5, 1.2) -> 1.2 (clipped); ratio 0.5, A<0: min(-0.5, -0.8) -> -0.8 (clipped);
    # ratio 1.1 inside the range: 2.2; ratio 0.7, A>0: min(0.7, 0.8) -> 0.7 (the pessimistic bound, unclipped)
    assert loss.tolist()[0] == pytest.approx([-1.2, 0.8, -2.2, -0.7], abs=1e-6)
    assert clipped.tolist() == [[True, True, False, False]]
    high, _ = clipped_surrogate(logp, old, adv, 0.2, epsilon_high=0.28)      # DAPO clip-higher
    assert high[0, 0].item() == pytest.approx(-1.28)
    per_seq, _ = clipped_surrogate(logp, old, torch.tensor([1.0]), 0.2)     # one advantage per sequence
    assert per_seq[0, 1].item() == pytest.approx(-0.5)


def test_k3_estimator_is_nonnegative_and_unbiased():
    torch.manual_seed(0)
    a, b = torch.randn(1000) * 3, torch.randn(1000) * 3
    assert bool((k3_kl(a, b) >= 0).all()) and k3_kl(a, a).abs().max().item() == 0.0
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    exact = (p * (p / q).log()).sum().item()                              # KL(p || q)
    x = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    estimate = k3_kl(p.log()[x], q.log()[x]).mean().item()
    assert estimate == pytest.approx(exact, rel=0.02)


def test_token_normalisations_on_a_hand_example():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(per_token, mask, "grpo", 4).item() == pytest.approx((2.0 + 4.0) / 2)   # per-sequence means
    assert aggregate(per_token, mask, "dapo", 4).item() == pytest.approx(10.0 / 4)          # token mean
    assert aggregate(per_token, mask, "dr_grpo", 4).item() == pytest.approx(10.0 / (2 * 4))  # / (B x max length)
    with pytest.raises(ConfigError, match="loss style"):
        aggregate(per_token, mask, "ppo", 4)


def test_grpo_loss_adds_beta_times_kl_and_config_checks():
    torch.manual_seed(0)
    logp, ref = -torch.rand(2, 3), -torch.rand(2, 3)
    mask, adv = torch.ones(2, 3), torch.tensor([1.0, -1.0])
    base, _ = grpo_loss(logp, logp, None, adv, mask, GRPOConfig(beta=0.0, max_new_tokens=3))
    with_kl, metrics = grpo_loss(logp, logp, ref, adv, mask, GRPOConfig(beta=0.5, max_new_tokens=3))
    assert with_kl.item() == pytest.approx(base.item() + 0.5 * k3_kl(logp, ref).mean().item(), abs=1e-6)
    assert metrics["kl"] == pytest.approx(k3_kl(logp, ref).mean().item())
    # ratio 1: the loss is -mean(A) per token; with advantages summing to zero it is 0
    assert base.item() == pytest.approx(0.0, abs=1e-7)
    for bad in ({"loss_style": "x"}, {"num_generations": 1}, {"epsilon": 0}, {"beta": -1},
                {"max_new_tokens": 0}):
        with pytest.raises(ConfigError):
            GRPOConfig(**bad)


@pytest.fixture(scope="module")
def loop_parts():
    import ocellus
    from ocellus.data.shapes import ShapesConfig
    from ocellus.train.preference import prompt_row, shapes_prompt
    d = ocellus.default_model_dir()
    cfg = ShapesConfig(image_size=48, seed=31, qa_weights=(("count", 1.0),))
    return ocellus.load(d), ocellus.load_processor(d), [prompt_row(shapes_prompt(cfg, i), i) for i in range(2)]


def _loop(model, proc, fns, beta=0.0):
    from ocellus.train.grpo import GRPO
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return GRPO(model, proc, fns, GRPOConfig(num_generations=4, max_new_tokens=3, beta=beta), opt, sched)


def test_loop_step_with_all_equal_rewards(loop_parts):
    model, proc, rows = loop_parts

    def constant(prompts, completions, **_):
        return [1.0] * len(completions)

    record = _loop(model, proc, [constant]).step(rows)
    assert record["frac_reward_zero_std"] == 1.0 and record["loss"] == 0.0 and record["reward"] == 1.0


def test_loop_step_with_the_count_reward(loop_parts):
    from ocellus.train.rewards import count_reward
    model, proc, rows = loop_parts
    record = _loop(model, proc, [count_reward], beta=0.04).step(rows)
    assert 0.0 <= record["reward"] <= 1.0 and record["kl"] == pytest.approx(0.0, abs=1e-6)   # lr 0: pi == pi_ref
    assert "rewards/count_reward" in record and record["completion_length"] >= 1


def test_loop_step_with_a_failing_reward_function_is_an_input_error(loop_parts):
    model, proc, rows = loop_parts

    def broken(prompts, completions, answer, **_):
        return [float("nan")] * len(completions)

    with pytest.raises(InputError, match="'broken' returned nan"):
        _loop(model, proc, [broken]).step(rows)
