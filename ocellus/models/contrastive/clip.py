"""CLIP: a dual encoder trained so matching image-text pairs have the highest cosine similarity.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(Fig. 3's pseudo-code): image tower -> visual_projection, text tower -> text_projection (both
without bias), L2-normalise, logits = exp(t) * img @ txt.T with a learned log-scale t (init
log(1/0.07), clamped at 100), symmetric InfoNCE. Matches transformers' CLIPModel (logits_per_image,
logits_per_text, text_embeds, image_embeds; tests/parity/test_clip_parity.py).

`DualEncoder` is the composed model for CLIP and SigLIP alike, built from parts passed in:
an image tower (ocellus/models/vision/vit.py), a text tower (ocellus/models/text/clip_text.py),
optional projections, the log-scale and (SigLIP) a bias, and which loss trains it
(ocellus/models/contrastive/losses.py: InfoNCE or sigmoid; features are all-gathered across
processes so negatives span the global batch). Parameter names equal transformers' (vision_model.*,
text_model.*, visual_projection, text_projection, logit_scale, logit_bias); the checkpoints (key tables, builders,
config.json) are the families' folders, models/families/clip/ and models/families/siglip/.

Note on the clamp: transformers applies exp(logit_scale) unclamped. Checkpoints trained with the
clamp hold at most ln(100) rounded to fp32 (4.6052 -> 100.003), so our logits can differ from
transformers' by up to 3e-5 relative on such checkpoints; below the cap they are equal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_int
from ocellus.models.contrastive.losses import MAX_LOGIT_SCALE, contrastive_loss, logit_scale_value
from ocellus.models.text.clip_text import TextTowerConfig, TextTransformer
from ocellus.models.vision.vit import ViTConfig, VisionTransformer

LOSSES = ("infonce", "sigmoid")


SIGLIP_SCALE_INIT, SIGLIP_BIAS_INIT = math.log(10.0), -10.0


@dataclass(frozen=True)
class DualEncoderConfig:
    loss: str = "infonce"                      # "infonce" (CLIP) | "sigmoid" (SigLIP)
    projection_dim: int | None = 512           # None: no projections (SigLIP; its towers end in heads)
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None       # SigLIP: -10
    scalar_shape: tuple[int, ...] = ()         # CLIP stores logit_scale as [], SigLIP as [1]
    max_logit_scale: float | None = MAX_LOGIT_SCALE
    hf: dict = field(default_factory=dict, compare=False, repr=False)   # the source config.json

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"dual encoder loss {self.loss!r}; supported: {LOSSES}")
        positive_int(self.projection_dim, "projection_dim (or None)", optional=True)
        if self.max_logit_scale is not None and self.max_logit_scale <= 0:
            raise ConfigError(f"max_logit_scale must be positive (or None), got {self.max_logit_scale}")


@dataclass
class ContrastiveOutput:
    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None    # [N images, N texts]
    logits_per_text: torch.Tensor | None = None     # [N texts, N images]
    text_embeds: torch.Tensor | None = None         # [N, E], L2-normalised
    image_embeds: torch.Tensor | None = None        # [N, E], L2-normalised


def _group(**members) -> nn.Module:
    """A view grouping existing modules/parameters under one Module (for training stages)."""
    group = nn.Module()
    for name, member in members.items():
        if isinstance(member, nn.Parameter):
            group.register_parameter(name, member)
        elif member is not None:
            group.add_module(name, member)
    return group


class DualEncoder(nn.Module):
    def __init__(self, vision_model: VisionTransformer, text_model: TextTransformer, cfg: DualEncoderConfig):
        super().__init__()
        self.config = cfg
        self.vision_model, self.text_model = vision_model, text_model
        if cfg.projection_dim is not None:
            self.visual_projection = nn.Linear(vision_model.config.hidden_size, cfg.projection_dim, bias=False)
            self.text_projection = nn.Linear(text_model.config.hidden_size, cfg.projection_dim, bias=False)
        else:
            self.visual_projection = self.text_projection = None
        self.logit_scale = nn.Parameter(torch.full(cfg.scalar_shape, float(cfg.logit_scale_init)))
        self.logit_bias = (nn.Parameter(torch.full(cfg.scalar_shape, float(cfg.logit_bias_init)))
                           if cfg.logit_bias_init is not None else None)

    def parts(self) -> dict[str, nn.Module]:
        """Training-stage parts: each tower with its projection, and the scale (+ bias). LiT's
        "locked image tuning" is {vision: frozen, text: full, scale: full}."""
        return {"vision": _group(vision_model=self.vision_model, visual_projection=self.visual_projection),
                "text": _group(text_model=self.text_model, text_projection=self.text_projection),
                "scale": _group(logit_scale=self.logit_scale, logit_bias=self.logit_bias)}

    # -- features --------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Projected, unnormalised image features [N, E] (transformers' get_image_features pooler_output)."""
        x = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).pooler_output
        return self.visual_projection(x) if self.visual_projection is not None else x

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          position_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.text_model(input_ids, attention_mask, position_ids).pooler_output
        return self.text_projection(x) if self.text_projection is not None else x

    def scale(self) -> torch.Tensor:
        return logit_scale_value(self.logit_scale, self.config.max_logit_scale)

    def similarity(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Logits [N images, M texts] from normalised embeddings: scale * cosine (+ bias)."""
        logits = self.scale() * image_embeds @ text_embeds.t()
        return logits + self.logit_bias if self.logit_bias is not None else logits

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                return_loss: bool = False, ids: torch.Tensor | None = None,
                interpolate_pos_encoding: bool = False) -> ContrastiveOutput:
        """Images [N, 3, H, W] and texts [M, T] -> similarity logits. return_loss: N == M pairs (i, i),
        trained with the configured loss over the batch of every process; `ids` [N] marks pairs that
        are positives of each other (same id, e.g. the same caption)."""
        if input_ids is None or pixel_values is None:
            raise InputError("a dual encoder's forward needs both input_ids (texts) and pixel_values (images); "
                             "use get_text_features / get_image_features for one side")
        image_embeds = F.normalize(self.get_image_features(pixel_values, interpolate_pos_encoding), dim=-1)  # [N, E]
        text_embeds = F.normalize(self.get_text_features(input_ids, attention_mask, position_ids), dim=-1)   # [M, E]
        logits_per_image = self.similarity(image_embeds, text_embeds)             # [N, M]
        loss = None
        if return_loss:
            if image_embeds.shape[0] != text_embeds.shape[0]:
                raise InputError(f"return_loss needs paired data: {image_embeds.shape[0]} images vs "
                                 f"{text_embeds.shape[0]} texts")
            loss = contrastive_loss(image_embeds, text_embeds, self.logit_scale, self.logit_bias,
                                    self.config.loss, ids, self.config.max_logit_scale)
        return ContrastiveOutput(loss=loss, logits_per_image=logits_per_image, logits_per_text=logits_per_image.t(),
                                 text_embeds=text_embeds, image_embeds=image_embeds)


# ---- new dual encoders (the checkpoints' builders: models/families/clip/, models/families/siglip/) ----------
def siglip_config(**kw) -> DualEncoderConfig:
    """SigLIP's numbers: sigmoid loss, no projections, scale and bias stored as [1] like transformers."""
    return DualEncoderConfig(**{**dict(loss="sigmoid", projection_dim=None, logit_scale_init=SIGLIP_SCALE_INIT,
                                       logit_bias_init=SIGLIP_BIAS_INIT, scalar_shape=(1,)), **kw})


def build_dual_encoder(kind: str, vision: dict, text: dict, projection_dim: int | None = None, **dual) -> DualEncoder:
    """A new (randomly initialised) CLIP or SigLIP from tower config dicts in transformers' field names
    (vision: image_size, patch_size, hidden_size, ...; text: vocab_size, max_position_embeddings,
    eos_token_id, ...), e.g. for training from scratch. `dual` overrides DualEncoderConfig fields."""
    if kind not in ("clip", "siglip"):
        raise ConfigError(f"dual encoder kind {kind!r}; use 'clip' or 'siglip'")
    vit = VisionTransformer(ViTConfig.from_hf({**vision, "model_type": f"{kind}_vision_model"}))
    text = {**text, "model_type": f"{kind}_text_model"}
    if kind == "siglip":
        text.setdefault("projection_size", vit.config.hidden_size)   # the text head lands in the image space
        cfg = siglip_config(**dual)
    else:
        cfg = DualEncoderConfig(projection_dim=projection_dim or 512, **dual)
    model = DualEncoder(vit, TextTransformer(TextTowerConfig.from_hf(text)), cfg)
    model.family_name = kind     # ocellus.save finds the family by this name
    return model


__all__ = ["DualEncoder", "DualEncoderConfig", "ContrastiveOutput", "build_dual_encoder", "siglip_config"]
