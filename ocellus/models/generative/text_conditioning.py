"""Text-to-image latent diffusion: a CLIP text tower conditions the UNet (Stable Diffusion, at toy scale).

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", sec. 3.3 and 4.3.2:
a caption y is encoded by a transformer tau(y) into per-token states [B, T, D] that every cross-attention
layer of the UNet reads (Q from the image tokens, K/V from the caption tokens: unet.py
AttentionBlock.cross_attend); Stable Diffusion's tau is a frozen CLIP ViT-L/14 text encoder (its last
hidden states). Classifier-free guidance's null condition is the encoding of the *empty caption* "",
not a learned vector: training replaces a caption by "" with probability p_uncond, and sampling guides
uncond + s * (cond - uncond) with uncond = tau("") (diffusers' StableDiffusionPipeline with no negative
prompt). Here:

    ids, mask = encode_texts(captions)                  [B, T]   caption + EOS, right-padded (mask 0 on pads)
    dropped / null row: ids = [EOS, ...], mask = [1, 0, ...]      the empty caption "" at the same length
    context = text_model(ids, mask).last_hidden_state   [B, T, D] (no grad unless train_text_encoder)

The tower is ocellus/models/text/clip_text.py's (e.g. recipes/clip_tiny_shapes' export); it is causal, so
a row's states do not depend on the pads after it, and the pads are masked out of the cross-attention
(SD pads to 77 and attends to the pads; masking keeps a caption's image independent of its batch).
The tokenizer is the CLIP checkpoint's, saved beside the generator (checkpoint.py).
"""
from __future__ import annotations

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.models.generative.guidance import check_guidance_scale, drop_condition, guided
from ocellus.models.generative.latent_diffusion import DiffusionModel, LossOutput
from ocellus.models.text.clip_text import encode_texts, TextTransformer


class TextConditioner(nn.Module):
    """Captions -> the CLIP text tower's per-token states [B, T, D] and their mask [B, T]."""

    def __init__(self, text_model: TextTransformer, train_text_encoder: bool = False):
        super().__init__()
        if not text_model.config.causal or text_model.config.pooling != "eos":
            raise ConfigError("the text conditioner takes a CLIP text tower (causal, EOS-pooled): the empty caption "
                              "is [EOS], whose state must not depend on the padding after it")
        self.text_model, self.trainable = text_model, train_text_encoder
        self.tokenizer = None    # the CLIP checkpoint's; set by checkpoint.py (load_generator / text_encoder_from)
        if not train_text_encoder:
            text_model.requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.text_model.config.hidden_size

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.text_model.eval()
        return self

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (input_ids [B, T], attention_mask [B, T]) as the CLIP tower was trained on them."""
        if self.tokenizer is None:
            raise ConfigError("this text-conditioned generator has no tokenizer: load it with load_generator (it "
                              "reads the tokenizer.json saved beside the weights) or pass input_ids")
        if isinstance(captions, str) or not captions or not all(isinstance(c, str) for c in captions):
            raise InputError(f"prompts must be a non-empty list of strings, got {captions!r}")
        batch = encode_texts(list(captions), self.tokenizer, self.text_model.config.max_position_embeddings)
        return batch["input_ids"], batch["attention_mask"]

    def null_like(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty caption "" (EOS alone) at the batch's length: ids [B, T] all EOS, mask [1, 0, ..., 0]."""
        ids = torch.full_like(input_ids, self.text_model.config.eos_token_id)
        mask = torch.zeros_like(attention_mask)
        mask[:, 0] = 1
        return ids, mask

    def drop(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, p: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier-free guidance training: each caption becomes the empty caption with probability p."""
        rows = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        dropped = (drop_condition(rows, 1, p, generator) == 1)[:, None]                  # [B, 1]
        null_ids, null_mask = self.null_like(input_ids, attention_mask)
        return torch.where(dropped, null_ids, input_ids), torch.where(dropped, null_mask, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is None:
            raise InputError("the text conditioner needs attention_mask [B, T] (1 = token, 0 = padding)")
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            states = self.text_model(input_ids, attention_mask).last_hidden_state      # [B, T, D]
        return states, attention_mask


class TextDiffusionModel(DiffusionModel):
    """DiffusionModel whose condition is a caption: eps_theta(z_t, t, tau(caption)) with masked cross-attention."""

    conditioner: TextConditioner

    def parts(self) -> dict[str, nn.Module]:
        """What trains: the UNet, and the text tower only with train_text_encoder (the autoencoder never)."""
        return {"unet": self.unet, **({"text_encoder": self.conditioner} if self.conditioner.trainable else {})}

    def eps(self, z: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        context, mask = cond                                                          # [B, T, D], [B, T]
        return self.unet(z, t, context, mask)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LossOutput:
        self.latent_shape(pixel_values.shape[-1])
        if self.training:
            input_ids, attention_mask = self.conditioner.drop(input_ids, attention_mask, self.p_uncond)
        cond = self.conditioner(input_ids, attention_mask)
        z = self.to_latent(pixel_values)
        return LossOutput(self.diffusion.loss(lambda x, t: self.eps(x, t, cond), z))

    @torch.no_grad()
    def generate(self, prompts: list[str], steps: int = 50, sampler: str = "ddim", guidance_scale: float = 1.0,
                 eta: float = 0.0, generator: torch.Generator | None = None, image_size: int | None = None):
        """Images [B, C, H, W] in [-1, 1] for captions [B] (needs the tokenizer; generate_ids takes token ids)."""
        return self.generate_ids(*self.conditioner.tokenize(prompts), steps=steps, sampler=sampler,
                                 guidance_scale=guidance_scale, eta=eta, generator=generator, image_size=image_size)

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int = 50,
                     sampler: str = "ddim", guidance_scale: float = 1.0, eta: float = 0.0,
                     generator: torch.Generator | None = None, image_size: int | None = None) -> torch.Tensor:
        """Guided by uncond + s * (cond - uncond), uncond = the empty caption; the text tower runs once, not per
        step."""
        check_guidance_scale(guidance_scale)
        cond = self.conditioner(input_ids, attention_mask)
        null = self.conditioner(*self.conditioner.null_like(input_ids, attention_mask))
        shape = (input_ids.shape[0], *self.latent_shape(image_size or self.image_size))
        eps_fn = lambda x, t: guided(self.eps, x, cond, null, guidance_scale, t)
        z = self.diffusion.sample(eps_fn, shape, steps, sampler, eta, generator, device=self.latent_scale.device)
        return self.decode_latents(z)
