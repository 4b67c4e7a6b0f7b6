"""Image generation: VQ-VAE / VQGAN tokenizers (vq.py, vqgan.py), DDPM / DDIM (ddpm.py) with a UNet
(unet.py) in pixel or latent space (latent_diffusion.py), classifier-free guidance (guidance.py),
MaskGIT (maskgit.py) and autoregressive image tokens (ar_image.py); checkpoints in checkpoint.py."""
