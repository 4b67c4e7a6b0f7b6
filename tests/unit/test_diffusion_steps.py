"""One real step of DDPM training and sampling and of class-conditional latent diffusion, recomputed by hand.

Ho et al. 2020: abar_t = prod (1 - beta_s); x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4);
loss = ||eps - eps_theta(x_t, t)||^2 (eq. 14); ancestral step = posterior mean (eq. 7) + sqrt(beta-tilde) z.
Song et al. 2021 (DDIM, eq. 12): x_t' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps + sigma z.
Ho & Salimans 2021: eps = eps(null) + s (eps(c) - eps(null)); the condition is dropped to null with p_uncond.
Rombach et al. 2022: the DDPM runs on z = scale * E(x) and images are D(z / scale).
"""
import torch
import torch.nn.functional as F

from ocellus.models.generative.ddpm import Diffusion, DiffusionConfig
from ocellus.models.generative.latent_diffusion import DiffusionModel
from ocellus.models.generative.unet import Conditioner, UNet, UNetConfig
from ocellus.models.generative.vq import VQConfig, VQVAE

T = 40


def _abar(cfg: DiffusionConfig) -> torch.Tensor:
    """abar_t of the linear schedule, from the definition."""
    betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def _b(v, like):
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)                        # [B] -> [B, 1, 1, 1]


def test_training_step_is_eps_mse_at_the_closed_form_x_t():
    cfg = DiffusionConfig(num_train_timesteps=T)
    diff = Diffusion(cfg)
    x0 = torch.randn(5, 2, 4, 4)
    seen = {}

    def eps_fn(x_t, t):
        seen.update(x_t=x_t, t=t)
        return torch.tanh(x_t) * 0.3 + 0.01 * t.view(-1, 1, 1, 1)
    loss = diff.loss(eps_fn, x0, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    t = torch.randint(0, T, (5,), generator=g)                                         # uniform timestep
    eps = torch.randn(x0.shape, generator=g)                                           # the noise
    ab = _abar(cfg)[t]
    x_t = _b(ab.sqrt(), x0) * x0 + _b((1 - ab).sqrt(), x0) * eps
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], x_t)
    torch.testing.assert_close(loss, (eps_fn(x_t, t) - eps).pow(2).mean())            # target: eps


def test_one_ddpm_and_one_ddim_step_equal_the_formulas():
    cfg = DiffusionConfig(num_train_timesteps=T)
    diff, ab = Diffusion(cfg), _abar(cfg).float()
    x_t, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = 17
    # DDPM, t -> t-1: posterior mean (eq. 7) and beta-tilde variance
    beta, a = 1 - ab[t] / ab[t - 1], ab[t] / ab[t - 1]
    x0 = (x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
    mean = ab[t - 1].sqrt() * beta / (1 - ab[t]) * x0 + a.sqrt() * (1 - ab[t - 1]) / (1 - ab[t]) * x_t
    var = (1 - ab[t - 1]) / (1 - ab[t]) * beta
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1))
    got = diff.ddpm_step(eps, t, x_t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, mean + var.sqrt() * z)
    # DDIM t -> t' (skipping), eta = 0.5
    tp, eta = 9, 0.5
    sigma = eta * ((1 - ab[tp]) / (1 - ab[t]) * (1 - ab[t] / ab[tp])).sqrt()
    want = ab[tp].sqrt() * x0 + (1 - ab[tp] - sigma ** 2).sqrt() * eps + sigma * z
    torch.testing.assert_close(diff.ddim_step(eps, t, x_t, tp, eta, torch.Generator().manual_seed(1)), want)


def _latent_model(p_uncond=0.5, scale=0.37):
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(in_channels=1, channels=8, channel_mults=(1,), embed_dim=4, num_codes=16, groups=4))
    unet = UNet(UNetConfig(in_channels=4, channels=8, channel_mults=(1, 2), attention_levels=(1,), num_heads=2,
                           context_dim=8, groups=4))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.2)   # zero-init head would predict eps = 0 for any input
    m = DiffusionModel(unet, Conditioner(3, 8), DiffusionConfig(num_train_timesteps=T), vq, image_size=8,
                       p_uncond=p_uncond)
    m.latent_scale.fill_(scale)
    return m, vq, unet


def _ctx(m, labels):
    return m.conditioner.class_embed.weight[labels][:, None]                           # [B, 1, Dc]


def test_latent_diffusion_training_step_scales_latents_and_drops_the_condition():
    m, vq, unet = _latent_model()
    x, labels = torch.rand(8, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(7)
    loss = m.train()(x, labels).loss
    torch.manual_seed(7)                                                               # replay the step's draws
    drop = torch.rand(8) < 0.5                                                         # condition dropout
    t = torch.randint(0, T, (8,))
    with torch.no_grad():
        z0 = vq.encode(x) * 0.37                                                       # [8, 4, 4, 4] scaled latents
    eps = torch.randn(z0.shape)
    assert drop.any() and (~drop).any()
    cond = torch.where(drop, torch.full_like(labels, 3), labels)                      # 3 = the null class
    ab = _abar(m.diffusion.cfg)[t]
    z_t = _b(ab.sqrt(), z0) * z0 + _b((1 - ab).sqrt(), z0) * eps
    torch.testing.assert_close(loss, F.mse_loss(unet(z_t, t, _ctx(m, cond)), eps))


def test_latent_diffusion_sampling_guides_in_latent_space_and_decodes_z_over_scale():
    m, vq, unet = _latent_model()
    m.eval()
    labels, s, steps = torch.tensor([2, 0]), 3.0, 2
    seen = {}
    decode = vq.decode
    vq.decode = lambda z: (seen.__setitem__("z", z), decode(z))[1]
    images = m.generate(labels, steps=steps, sampler="ddim", guidance_scale=s, generator=torch.Generator().manual_seed(2))
    ab = _abar(m.diffusion.cfg).float()
    x = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(2))         # latent noise [B, 4, h, w]
    ts = [(T // steps) * i for i in reversed(range(steps))]                            # "leading": 20, 0
    with torch.no_grad():
        for i, t in enumerate(ts):
            tt = torch.full((2,), t)
            e_c, e_u = unet(x, tt, _ctx(m, labels)), unet(x, tt, _ctx(m, torch.tensor([3, 3])))
            e = e_u + s * (e_c - e_u)                                                  # guided, null branch as base
            a_prev = ab[ts[i + 1]] if i + 1 < steps else torch.tensor(1.0)
            x0 = (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e                          # DDIM, eta = 0
        want = decode(x / 0.37).clamp(-1, 1)
    torch.testing.assert_close(seen["z"], x / 0.37, atol=1e-5, rtol=1e-4)
    assert images.shape == (2, 1, 8, 8)
    torch.testing.assert_close(images, want, atol=1e-5, rtol=1e-4)


def test_fitted_latent_scale_gives_unit_variance_latents():
    """latent_scale = 1 / std(E(x)) (Rombach et al. sec. 4.3): the scaled training latents have std 1."""
    m, vq, _ = _latent_model(scale=1.0)
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    scale = m.fit_latent_scale(x)
    with torch.no_grad():
        raw = vq.encode(x)
    assert abs(scale - 1 / raw.std().item()) < 1e-6
    assert abs(m.to_latent(x).std().item() - 1.0) < 1e-5
