"""Denoising diffusion: beta schedules, the forward process, and the DDPM and DDIM samplers.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM); Song et al. 2021, "Denoising
Diffusion Implicit Models" (DDIM); Nichol & Dhariwal 2021, "Improved DDPM" (cosine schedule).
The arithmetic matches diffusers' `DDPMScheduler` / `DDIMScheduler` (epsilon prediction) step for
step; tests/parity/test_scheduler_parity.py compares them on the same inputs.

    alpha_t = 1 - beta_t,   abar_t = prod_{s<=t} alpha_s
    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)                       (closed form, eq. 4)
    loss = || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2   (eq. 14, "simple")
    x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)
    ancestral step t -> t': posterior mean  sqrt(abar_t') beta / (1 - abar_t) x0_hat
                                           + sqrt(alpha) (1 - abar_t') / (1 - abar_t) x_t,
        with alpha = abar_t / abar_t', beta = 1 - alpha (t' = t - 1 gives eq. 7); variance either
        beta-tilde = (1 - abar_t') / (1 - abar_t) beta (the true posterior's, "fixed_small")
        or beta ("fixed_large"); no noise at the last step.
    DDIM step t -> t': sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps_theta + sigma z,
        sigma = eta sqrt((1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t'))   (eq. 12, 16)

Timesteps are integers 0..T-1 as in diffusers (index t holds beta_{t+1} of the paper).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ocellus.errors import ConfigError, InputError, positive_int

SCHEDULES = ("linear", "scaled_linear", "cosine")
VARIANCES = ("fixed_small", "fixed_large")   # beta-tilde | beta (diffusers' names)
SPACINGS = ("leading", "trailing")


@dataclass(frozen=True)
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"          # linear | scaled_linear (Stable Diffusion) | cosine (improved DDPM)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    variance_type: str = "fixed_small"     # ancestral-step variance: beta-tilde (fixed_small) or beta (fixed_large)
    clip_sample: bool = False              # clamp x0_hat to [-clip_sample_range, clip_sample_range] in a step
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"      # how a sampler with fewer steps picks its timesteps

    def __post_init__(self):
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ConfigError(f"num_train_timesteps must be an int >= 2, got {self.num_train_timesteps!r}")
        for name, value, allowed in (("beta_schedule", self.beta_schedule, SCHEDULES),
                                     ("variance_type", self.variance_type, VARIANCES),
                                     ("timestep_spacing", self.timestep_spacing, SPACINGS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """[T] float32 betas, computed exactly as diffusers does (so the schedules are bitwise equal)."""
    T = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float32)
    if cfg.beta_schedule == "scaled_linear":  # linear in sqrt(beta): the latent-diffusion schedule
        return torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, T, dtype=torch.float32) ** 2
    # cosine: abar(t) = cos^2((t/T + s) / (1 + s) * pi/2), s = 0.008; beta_t = 1 - abar(t+1)/abar(t), capped
    # at 0.999 so the last step does not divide by ~0 (Nichol & Dhariwal sec. 3.2; diffusers "squaredcos_cap_v2")
    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float32)


def check_steps(steps, T: int) -> int:
    positive_int(steps, "sampling steps", error=InputError)
    if steps > T:
        raise InputError(f"sampling steps ({steps}) cannot exceed the {T} training timesteps")
    return steps


class Diffusion:
    """The schedule's tensors and the operations on them. Holds no network: samplers take an
    `eps_fn(x_t [B, ...], t [B]) -> eps [B, ...]`, so they run on a UNet, a latent UNet, or the
    exact epsilon of a known distribution (the property tests)."""

    def __init__(self, cfg: DiffusionConfig = DiffusionConfig()):
        self.cfg = cfg
        self.T = cfg.num_train_timesteps
        self.betas = make_betas(cfg)                               # [T]
        self.alphas = 1.0 - self.betas                             # [T]
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)    # [T] abar_t
        self.one = torch.tensor(1.0)                               # abar before step 0

    def _abar(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.one

    @staticmethod
    def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))  # [B] -> [B, 1, 1, ...]

    # -- forward process and training loss -------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) in closed form: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; t [B] ints."""
        ab = self._expand(self.alphas_cumprod.to(x0.device)[t], x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def loss(self, eps_fn: Callable, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The simple epsilon loss at a uniform random timestep per sample."""
        t = torch.randint(0, self.T, (x0.shape[0],), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return torch.nn.functional.mse_loss(eps_fn(self.q_sample(x0, t, noise), t), noise)

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        ab = self._abar(t)
        x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        if self.cfg.clip_sample:
            x0 = x0.clamp(-self.cfg.clip_sample_range, self.cfg.clip_sample_range)
        return x0

    # -- one step of each sampler ----------------------------------------------------------------
    def ddpm_step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, prev_t: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral step x_t -> x_{prev_t} (default t - 1) through the posterior q(x_prev | x_t, x0_hat)."""
        prev_t = t - 1 if prev_t is None else prev_t
        ab_t, ab_prev = self._abar(t), self._abar(prev_t)
        alpha, beta = ab_t / ab_prev, 1 - ab_t / ab_prev          # of the (possibly skipped) step t' -> t
        x0 = self.predict_x0(x_t, eps, t)
        mean = (ab_prev.sqrt() * beta / (1 - ab_t)) * x0 + (alpha.sqrt() * (1 - ab_prev) / (1 - ab_t)) * x_t
        if t == 0:
            return mean
        if self.cfg.variance_type == "fixed_small":
            var = ((1 - ab_prev) / (1 - ab_t) * beta).clamp(min=1e-20)
        else:
            var = beta
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + var.sqrt() * noise

    def ddim_step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, prev_t: int, eta: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM step x_t -> x_{prev_t}; eta = 0 is deterministic, eta = 1 has DDPM's variance."""
        ab_t, ab_prev = self._abar(t), self._abar(prev_t)
        x0 = self.predict_x0(x_t, eps, t)
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        out = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).sqrt() * eps
        if eta > 0:
            out = out + sigma * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return out

    # -- samplers ----------------------------------------------------------------------------------
    def timesteps(self, steps: int) -> list[int]:
        """Descending timesteps of a `steps`-step sampler (diffusers' "leading" / "trailing" spacing)."""
        steps = check_steps(steps, self.T)
        if self.cfg.timestep_spacing == "leading":   # 0, r, 2r, ... reversed (r = T // steps)
            ratio = self.T // steps
            return [i * ratio for i in range(steps)][::-1]
        ratio = self.T / steps                       # trailing: ends exactly at T - 1
        return [int(round(self.T - i * ratio)) - 1 for i in range(steps)]

    def sample(self, eps_fn: Callable, shape: tuple[int, ...], steps: int | None = None, sampler: str = "ddpm",
               eta: float = 0.0, generator: torch.Generator | None = None, device=None,
               x_T: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_0 [shape] from noise with `steps` (default T) ancestral (ddpm) or DDIM steps."""
        if sampler not in ("ddpm", "ddim"):
            raise ConfigError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"DDIM eta must be in [0, 1], got {eta}")
        ts = self.timesteps(self.T if steps is None else steps)
        x = torch.randn(shape, generator=generator, device=device) if x_T is None else x_T
        for i, t in enumerate(ts):
            prev_t = ts[i + 1] if i + 1 < len(ts) else -1
            eps = eps_fn(x, torch.full((shape[0],), t, dtype=torch.long, device=x.device))
            if sampler == "ddpm":
                x = self.ddpm_step(eps, t, x, prev_t, generator)
            else:
                x = self.ddim_step(eps, t, x, prev_t, eta, generator)
        return x
