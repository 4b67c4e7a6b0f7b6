"""DDPM math without a network: closed-form q(x_t|x_0), and sampling with the exact epsilon of a
Gaussian data distribution recovers that distribution (ancestral with both variances, DDIM)."""
import math

import pytest
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.models.generative.ddpm import Diffusion, DiffusionConfig


def exact_eps(diff: Diffusion, mu: torch.Tensor, std: torch.Tensor):
    """E[eps | x_t] when x_0 ~ N(mu, std^2) per dimension: x_t ~ N(sqrt(ab) mu, ab std^2 + 1 - ab), and
    eps is jointly Gaussian with x_t, so E[eps | x_t] = sqrt(1-ab) (x_t - sqrt(ab) mu) / (ab std^2 + 1 - ab)."""
    def fn(x, t):
        ab = diff.alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1)))
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * std ** 2 + 1 - ab)
    return fn


@pytest.mark.parametrize("schedule,sampler,steps,variance", [
    ("linear", "ddpm", None, "fixed_small"), ("cosine", "ddpm", None, "fixed_large"),
    ("scaled_linear", "ddpm", None, "fixed_small"), ("cosine", "ddim", 125, "fixed_small"),
    ("linear", "ddim", 125, "fixed_small")])
def test_exact_epsilon_recovers_gaussian(schedule, sampler, steps, variance):
    """Ancestral sampling needs the full chain: with skipped steps, beta-tilde ignores the uncertainty
    of x0_hat and shrinks the std (~10% at 100 steps); DDIM (eta=0) is an ODE discretisation whose
    error is ~6% of the std at 50 steps and ~2% at 200 (of 1000)."""
    # T = 250 with betas x4 (the 1000-step schedules compressed) keeps the full chain fast on a CPU
    betas = {"beta_start": 8.5e-4 * 4, "beta_end": 0.012 * 4} if schedule == "scaled_linear" else \
        {"beta_start": 4e-4, "beta_end": 0.08}
    diff = Diffusion(DiffusionConfig(num_train_timesteps=250, beta_schedule=schedule, variance_type=variance, **betas))
    assert diff.alphas_cumprod[-1] < 0.01   # x_T is (nearly) pure noise
    # std not far below sqrt(beta_0): the noiseless last step returns E[x0 | x_1], whose std is shrunk by
    # sqrt(std^2 / (std^2 + beta_0)) (2% for std 0.3 under the scaled-linear schedule's beta_0 = 3.4e-3)
    mu, std = torch.tensor([1.5, -0.7]), torch.tensor([0.5, 0.3])
    x = diff.sample(exact_eps(diff, mu, std), (4000, 2), steps=steps, sampler=sampler,
                    generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), mu, rtol=0, atol=0.03)   # 3.5 standard errors of the mean
    # a wrong variance (beta-tilde vs beta mixed up, a missing sqrt) moves the std by far more than this
    torch.testing.assert_close(x.std(0), std, rtol=0.05, atol=0)


def test_wrong_epsilon_does_not_recover():
    """The property test can fail: a slightly wrong epsilon (bias) moves the recovered mean."""
    diff = Diffusion()
    mu, std = torch.tensor([1.5]), torch.tensor([0.5])
    good = exact_eps(diff, mu, std)
    x = diff.sample(lambda x, t: good(x, t) + 0.05, (5000, 1), steps=50, sampler="ddim",
                    generator=torch.Generator().manual_seed(0))
    assert (x.mean() - mu).abs() > 0.1


def test_q_sample_closed_form_statistics():
    """Iterating x_t = sqrt(1-b_t) x_{t-1} + sqrt(b_t) z gives the closed form's mean and variance."""
    diff = Diffusion(DiffusionConfig(num_train_timesteps=200, beta_schedule="cosine"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((40000,), 2.0)
    x = x0.clone()
    for t in range(120):
        x = (1 - diff.betas[t]).sqrt() * x + diff.betas[t].sqrt() * torch.randn(x.shape, generator=g)
    closed = diff.q_sample(x0, torch.full((40000,), 119), torch.randn(x.shape, generator=g))
    ab = diff.alphas_cumprod[119]
    for s in (x, closed):
        assert abs(s.mean() - 2 * ab.sqrt()) < 0.02 and abs(s.var() - (1 - ab)) < 0.02


def test_cosine_schedule_endpoints():
    diff = Diffusion(DiffusionConfig(beta_schedule="cosine"))
    assert diff.betas.max() <= 0.999 and diff.alphas_cumprod[0] > 0.9999 and diff.alphas_cumprod[-1] < 1e-4
    lin = Diffusion()
    assert math.isclose(lin.betas[0].item(), 1e-4, rel_tol=1e-6) and math.isclose(lin.betas[-1].item(), 0.02, rel_tol=1e-6)


def test_loss_is_zero_for_the_true_noise_predictor():
    diff = Diffusion()
    x0 = torch.randn(8, 1, 4, 4)
    # recover the noise from x_t and x0 exactly: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    def oracle(x_t, t):
        ab = diff.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    assert diff.loss(oracle, x0, torch.Generator().manual_seed(0)) < 1e-8
    assert diff.loss(lambda x, t: torch.zeros_like(x), x0, torch.Generator().manual_seed(0)) > 0.5


@pytest.mark.parametrize("steps", [0, -3, 2.5, 1001])
def test_bad_steps(steps):
    with pytest.raises(InputError, match="steps"):
        Diffusion().timesteps(steps)


def test_bad_config():
    with pytest.raises(ConfigError, match="beta_schedule"):
        DiffusionConfig(beta_schedule="sigmoid")
    with pytest.raises(ConfigError, match="beta_start"):
        DiffusionConfig(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ConfigError, match="sampler"):
        Diffusion().sample(lambda x, t: x, (1, 1), steps=2, sampler="euler")
    with pytest.raises(ConfigError, match="eta"):
        Diffusion().sample(lambda x, t: x, (1, 1), steps=2, sampler="ddim", eta=2.0)
