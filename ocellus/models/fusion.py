"""Early fusion: write image features into the text embedding sequence at the image
placeholder positions (LLaVA, Qwen-VL, InternVL...). Deep fusion (gated cross-attention,
Flamingo) lives with its family.

The processor expanded each `<image>` into exactly tokens_per_image[i] placeholder ids; here the
count is asserted per sample, so a mismatch names the sample instead of silently shifting
every later image (the "tokenization mismatch" failure).
"""
from __future__ import annotations

import torch

from ocellus.errors import InputError


def splice(text_embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
           image_features: torch.Tensor, tokens_per_image: list[int] | None = None) -> torch.Tensor:
    """text_embeds [B, T, D]; input_ids [B, T]; image_features [total_image_tokens, D] with
    images in batch order (sample 0's images first); tokens_per_image: one count per image
    (default: treat features as one block). Returns a new [B, T, D] tensor."""
    is_image = input_ids == image_token_id                                    # [B, T]
    per_sample = is_image.sum(-1).tolist()                                    # placeholders per sample
    total = image_features.shape[0]
    if tokens_per_image is None:
        tokens_per_image = [total] if total else []
    if sum(tokens_per_image) != total:
        raise InputError(f"tokens_per_image sums to {sum(tokens_per_image)} but {total} image feature rows were given")
    # every sample must end exactly on an image boundary, with as many placeholders as its images give
    boundaries = torch.tensor([0, *tokens_per_image]).cumsum(0).tolist()
    seen = 0
    for b, n in enumerate(per_sample):
        if seen + n not in boundaries:
            after = [x - seen for x in boundaries if x > seen]
            raise InputError(f"sample {b}: {n} image placeholder tokens, but its images provide "
                             f"{after[0] if after else 0} tokens (tokens per image: {tokens_per_image}); "
                             f"the prompt's <image> count or the image list is off")
        seen += n
    if seen != total:
        raise InputError(f"{sum(per_sample)} image placeholder tokens in the batch but {total} image tokens "
                         f"from {len(tokens_per_image)} image(s): {len(tokens_per_image)} images given, "
                         f"fewer <image> placeholders in the text")
    if total == 0:
        return text_embeds
    feats = image_features.to(text_embeds.dtype)
    return text_embeds.masked_scatter(is_image[..., None].expand_as(text_embeds), feats)
