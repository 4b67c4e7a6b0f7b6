"""DDPM / DDIM schedules and single sampler steps against diffusers' schedulers on the same inputs."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ocellus.models.generative.ddpm import Diffusion, DiffusionConfig

SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def _pair(schedule, T=1000, **kw):
    ours = Diffusion(DiffusionConfig(num_train_timesteps=T, beta_schedule=schedule, beta_start=1e-4 if schedule != "scaled_linear" else 8.5e-4,
                                     beta_end=0.02 if schedule != "scaled_linear" else 0.012, **kw))
    return ours, dict(num_train_timesteps=T, beta_schedule=SCHEDULES[schedule], beta_start=ours.cfg.beta_start,
                      beta_end=ours.cfg.beta_end, clip_sample=ours.cfg.clip_sample)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("T", [1000, 50])
def test_schedule_equals_diffusers(schedule, T):
    ours, kw = _pair(schedule, T)
    ref = diffusers.DDPMScheduler(**kw)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=1e-7)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_equals_add_noise(schedule):
    ours, kw = _pair(schedule)
    ref = diffusers.DDPMScheduler(**kw)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(ours.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), rtol=0, atol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("steps", [None, 20])
def test_ddpm_step_equals_diffusers(schedule, variance, clip, steps):
    ours, kw = _pair(schedule, variance_type=variance, clip_sample=clip)
    ref = diffusers.DDPMScheduler(**kw, variance_type=variance)
    ref.set_timesteps(steps or 1000)
    ts = ours.timesteps(steps or 1000)
    assert ts == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 3, 6, 6, generator=g), torch.randn(2, 3, 6, 6, generator=g)
    for i in (0, len(ts) // 2, len(ts) - 1):  # first, middle, last (no noise) step
        t = ts[i]
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        want = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
        got = ours.ddpm_step(eps, t, x, prev, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_step_equals_diffusers(schedule, eta, steps):
    ours, kw = _pair(schedule)
    ref = diffusers.DDIMScheduler(**kw)
    ref.set_timesteps(steps)
    ts = ours.timesteps(steps)
    assert ts == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(2, 3, 6, 6, generator=g), torch.randn(2, 3, 6, 6, generator=g)
    for i in (0, steps // 2, steps - 1):
        t = ts[i]
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        want = ref.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(3)).prev_sample
        got = ours.ddim_step(eps, t, x, prev, eta=eta, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_trailing_timesteps_equal_diffusers():
    ours, kw = _pair("linear", timestep_spacing="trailing")
    ref = diffusers.DDIMScheduler(**kw, timestep_spacing="trailing")
    for steps in (7, 25):
        ref.set_timesteps(steps)
        assert ours.timesteps(steps) == ref.timesteps.tolist()


def test_full_ddim_loop_equals_diffusers():
    """A whole 10-step DDIM trajectory with a fixed (fake) epsilon network."""
    ours, kw = _pair("cosine")
    ref = diffusers.DDIMScheduler(**kw)
    ref.set_timesteps(10)
    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(4))
    eps_fn = lambda x, t: torch.einsum("ij,bjhw->bihw", w, x) * 0.1 + t.float().view(-1, 1, 1, 1) / 1000
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(eps_fn(x, t.expand(2)), t, x).prev_sample
    got = ours.sample(eps_fn, (2, 3, 4, 4), steps=10, sampler="ddim", x_T=x_T)
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-4)
