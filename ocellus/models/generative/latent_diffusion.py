"""Class-conditional diffusion, in pixel space or in an autoencoder's latent space.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models": train the
DDPM of ddpm.py on z = scale * E(x) instead of x, where E is a frozen (VQ-regularised) autoencoder
and `latent_scale` = 1 / std(z) over the training data gives the latents unit variance (sec. 4.3,
G.1: their 0.18215 for Stable Diffusion's KL autoencoder); decode with D(z / scale) (for the VQ
autoencoder the decoder quantizes first, as in their VQ-reg models). The condition (a class label)
reaches the UNet through cross-attention (sec. 3.3), and is dropped to the null condition with
probability p_uncond during training so the same network also predicts the unconditional epsilon for
classifier-free guidance (guidance.py). With autoencoder=None this is the plain pixel-space conditional
DDPM. Captions instead of labels: text_conditioning.py (TextDiffusionModel, a CLIP text tower).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ocellus.errors import InputError
from ocellus.models.generative.ddpm import Diffusion, DiffusionConfig
from ocellus.models.generative.guidance import check_guidance_scale, guided
from ocellus.models.generative.unet import Conditioner, UNet


@dataclass
class LossOutput:
    loss: torch.Tensor


class DiffusionModel(nn.Module):
    def __init__(self, unet: UNet, conditioner: Conditioner, diffusion: DiffusionConfig = DiffusionConfig(),
                 autoencoder: nn.Module | None = None, image_size: int = 16, p_uncond: float = 0.1):
        super().__init__()
        self.unet, self.conditioner, self.autoencoder = unet, conditioner, autoencoder
        self.diffusion = Diffusion(diffusion)
        self.image_size, self.p_uncond = image_size, p_uncond
        self.register_buffer("latent_scale", torch.tensor(1.0))
        if autoencoder is not None:
            autoencoder.requires_grad_(False)
            autoencoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()   # frozen: its quantizer must not update EMA/restart statistics
        return self

    def parts(self) -> dict[str, nn.Module]:
        parts = {"unet": self.unet, "conditioner": self.conditioner}
        if self.autoencoder is not None:
            parts["autoencoder"] = self.autoencoder
        return parts

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, h, w) of what the diffusion runs on for images image_size x image_size."""
        f = self.autoencoder.cfg.downsample_factor if self.autoencoder is not None else 1
        total = f * self.unet.cfg.downsample_factor
        if image_size % total:
            raise InputError(f"image size {image_size} is not divisible by the downsampling factor {total} "
                             f"(autoencoder x{f}, UNet x{self.unet.cfg.downsample_factor})")
        return self.unet.cfg.in_channels, image_size // f, image_size // f

    @torch.no_grad()
    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            return x
        return self.autoencoder.encode(x) * self.latent_scale

    @torch.no_grad()
    def fit_latent_scale(self, x: torch.Tensor) -> float:
        """latent_scale = 1 / std of the (unscaled) latents of x: call once on training images."""
        if self.autoencoder is not None:
            self.latent_scale.fill_(1.0 / self.autoencoder.encode(x).std().item())
        return self.latent_scale.item()

    def eps(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(z, t, self.conditioner(labels))                              # context [B, 1, Dc]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        self.latent_shape(pixel_values.shape[-1])
        labels = self.conditioner.drop(labels, self.p_uncond) if self.training else labels
        z = self.to_latent(pixel_values)
        return LossOutput(self.diffusion.loss(lambda x, t: self.eps(x, t, labels), z))

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, steps: int = 50, sampler: str = "ddim", guidance_scale: float = 1.0,
                 eta: float = 0.0, generator: torch.Generator | None = None, image_size: int | None = None):
        """Images [B, C, H, W] in [-1, 1] for class labels [B]."""
        check_guidance_scale(guidance_scale)
        self.conditioner.check_labels(labels)
        shape = (labels.shape[0], *self.latent_shape(image_size or self.image_size))
        null = self.conditioner.null_like(labels)
        eps_fn = lambda x, t: guided(self.eps, x, labels, null, guidance_scale, t)
        z = self.diffusion.sample(eps_fn, shape, steps, sampler, eta, generator,
                                  device=self.latent_scale.device)
        return self.decode_latents(z)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Sampled latents -> images [B, C, H, W] in [-1, 1]: D(z / scale)."""
        x = z if self.autoencoder is None else self.autoencoder.decode(z / self.latent_scale)
        return x.clamp(-1, 1)
