"""SEED's detokenizer as built from a spec: its defaults and the latent-space layout.

- Left out, p_uncond is DiffusionModel's 0.1: the learned null condition must see training rows, since
  decoding guides against it by default (guidance_scale 3).
- Over a VQ-VAE's latents the UNet reads and writes the autoencoder's embed_dim channels, whatever the
  unet spec says (the pixel default of 3 would not fit), and a training step and a decode run end to end.
"""
import inspect

import torch

from ocellus.models.generative.latent_diffusion import DiffusionModel
from ocellus.models.unified.seed_detokenizer import build_detokenizer

UNET = {"channels": 16, "channel_mults": [1, 2], "attention_levels": [1], "num_heads": 2, "context_dim": 16}
AE = {"kind": "vqvae", "vq": {"in_channels": 3, "channels": 8, "channel_mults": [1, 2], "embed_dim": 4,
                              "num_codes": 16, "groups": 4}}


def test_p_uncond_defaults_to_the_diffusion_models_and_is_positive():
    det = build_detokenizer({"unet": dict(UNET), "diffusion": {"num_train_timesteps": 20}}, embed_dim=24,
                            image_size=16)
    default = inspect.signature(DiffusionModel).parameters["p_uncond"].default
    assert det.p_uncond == default == 0.1


def test_latent_detokenizer_unet_takes_the_autoencoders_channels():
    torch.manual_seed(0)
    det = build_detokenizer({"unet": dict(UNET), "diffusion": {"num_train_timesteps": 20}, "autoencoder": AE,
                             "context_tokens": 2}, embed_dim=24, image_size=16)
    assert det.unet.cfg.in_channels == 4
    e = torch.randn(2, 24)
    loss = det.train()(torch.rand(2, 3, 16, 16) * 2 - 1, e).loss
    assert torch.isfinite(loss)
    out = det.eval().generate(e, steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16)
