"""The composed vision-language model (early fusion): vision encoder -> connector -> decoder.

H_v = W . g(X_v) (LLaVA): the encoder's chosen hidden layer (CLS dropped by the "default"
strategy) goes through the connector, and `fusion.splice` writes the result at the image
placeholder positions of the text embeddings before the decoder runs. Parts are passed in, so
the same class serves LLaVA (CLIP + MLP + Llama), SigLIP towers, other decoders and connectors.

An optional `packer` turns the projected features of an image's several views into that image's
token sequence; LLaVA-NeXT's AnyRes (connectors/anyres.py) is one: pixel_values [N, V, 3, H, W]
plus image_sizes [N, 2] in, [base ; unpadded grid with row newlines] per image out. Without a
packer (LLaVA, LLaVA-1.5) each image is one view and gives its P feature rows.

For generation the images are encoded once, at prefill: decode steps only pass input_ids.
"""
from __future__ import annotations

import torch
from torch import nn

from ocellus.errors import InputError
from ocellus.models.fusion import splice
from ocellus.models.generates import GeneratesWithDecoder


class VLM(GeneratesWithDecoder):
    def __init__(self, vision_tower: nn.Module, multi_modal_projector: nn.Module, language_model: nn.Module,
                 image_token_id: int, feature_layer: int | list[int] = -2, feature_select: str = "default",
                 config=None, packer: nn.Module | None = None):
        super().__init__()
        self.vision_tower = vision_tower
        self.multi_modal_projector = multi_modal_projector
        self.attach_decoder(language_model, config)
        self.image_token_id = image_token_id
        self.feature_layer = feature_layer
        self.feature_select = feature_select
        self.packer = packer  # None: one view per image, every image gives its P rows (LLaVA)

    def parts(self) -> dict[str, nn.Module]:
        """Training stages address these. A packer's learned parameters (LLaVA-NeXT's image_newline) belong
        to the connector: outside every part they would get gradients but sit in no optimizer group."""
        connector = self.multi_modal_projector if self.packer is None else \
            nn.ModuleList([self.multi_modal_projector, self.packer])
        return {"vision": self.vision_tower, "llm": self.language_model, "connector": connector}

    # -- images -------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, H, W] (images, or the views of images) -> [N, P, D] in the decoder's
        embedding space."""
        if pixel_values.dim() != 4:
            hint = "; [N, V, 3, H, W] views need a model with an anyres packer (LLaVA-NeXT)" \
                if pixel_values.dim() == 5 and self.packer is None else ""
            raise InputError(f"pixel_values must be [num_images, 3, H, W], got {tuple(pixel_values.shape)}{hint}")
        feats = self.vision_tower.features(pixel_values.to(self.vision_dtype), layer=self.feature_layer,
                                          strategy="full")                           # [N, P(+1), Dv]
        if self.feature_select == "default":
            # LLaVA's "default" drops the first token: CLIP's CLS. transformers drops it from
            # CLS-less towers (SigLIP) too, and processors count tokens that way: kept for parity
            feats = feats[:, 1:]                                                     # [N, P, Dv]
        return self.multi_modal_projector(feats)                                     # [N, P, D]

    def image_tokens(self, pixel_values: torch.Tensor, image_sizes=None) -> tuple[torch.Tensor, list[int]]:
        """-> (feature rows of all images [sum T_i, D], T_i per image): what `splice` writes.
        Without a packer T_i = P for every image (image_sizes is not needed and not used)."""
        if self.packer is None:
            feats = self.image_features(pixel_values)                                # [N, P, D]
            return feats.flatten(0, 1), [feats.shape[1]] * feats.shape[0]            # [N*P, D]
        views = self.packer.select_views(pixel_values, image_sizes)                  # [sum V_i, 3, H, W]
        seqs = self.packer(self.image_features(views), image_sizes)                  # N x [T_i, D]
        return torch.cat(seqs), [s.shape[0] for s in seqs]                           # [sum T_i, D]

    @property
    def vision_dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache=None, logits_to_keep: int = 0,
                inputs_embeds: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None, **kwargs):
        """image_sizes [N, 2]: original (H, W) of each image, used by a packer (LLaVA-NeXT) to know
        its views and unpad; ignored without one."""
        if inputs_embeds is None:
            if input_ids is None:
                raise InputError("pass input_ids (with image placeholder tokens) or inputs_embeds")
            inputs_embeds = self.language_model.embed_tokens(input_ids)              # [B, T, D]
            if pixel_values is not None:
                feats, counts = self.image_tokens(pixel_values, image_sizes)         # [sum T_i, D]
                inputs_embeds = splice(inputs_embeds, input_ids, self.image_token_id, feats,
                                       tokens_per_image=counts)
            elif (cache is None or cache.length == 0) and bool((input_ids == self.image_token_id).any()):
                # at prefill only: a decode step may legitimately sample the image token's id
                raise InputError(f"input_ids hold image tokens (id {self.image_token_id}) but no pixel_values were given")
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, labels=labels, cache=cache,
                                   logits_to_keep=logits_to_keep, **kwargs)
