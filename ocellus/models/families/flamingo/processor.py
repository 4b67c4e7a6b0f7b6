"""Flamingo's processor: every image is ONE <image> token in the text; the pixels reach the model through
cross-attention, not as spliced tokens."""
from __future__ import annotations

from pathlib import Path

from ocellus.data.image import ImageProcessorConfig, preprocess
from ocellus.data.processor import image_processor_dict, Processor
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import read_config
from ocellus.models.families.flamingo.modeling import Flamingo


def image_inputs_fn(image_config):
    """The processor's image side: every image -> pixel_values [1, 3, H, W] and ONE <image> token
    (cross-attention reads the pixels; the token only marks where the image is in the text)."""

    def image_inputs(images):
        pixel_values = preprocess(images, image_config, max_pixels=None)                    # [N, 3, H, W]
        return {"pixel_values": pixel_values}, [1] * len(images)
    return image_inputs


def _processor(tok, image_config, image_token: str = "<image>"):
    # patch_size / feature_select count spliced image tokens (LLaVA); image_inputs replaces that path
    return Processor(tok, image_config, patch_size=1, image_token=image_token, image_inputs=image_inputs_fn(image_config))


def training_processor(model: Flamingo, tok, image_config):
    return _processor(tok, image_config, image_token=tok.convert_ids_to_tokens(model.image_token_id))


def processor_from_dir(directory):
    """An exported Flamingo dir: tokenizer + preprocessor_config.json (size, mean, std) + config.json's
    image_token_index, which must be the tokenizer's image token."""
    directory = Path(directory)
    image_dict = image_processor_dict(directory)
    if image_dict is None:
        raise ConfigError(f"{directory}: no preprocessor_config.json; a Flamingo checkpoint needs its image settings")
    tok = Tokenizer.from_dir(directory)
    index = read_config(directory).get("image_token_index")
    if not isinstance(index, int) or tok.convert_ids_to_tokens(index) is None:
        raise ConfigError(f"{directory}: config.json's image_token_index {index!r} is not a token of its tokenizer")
    return _processor(tok, ImageProcessorConfig.from_dict(image_dict), image_token=tok.convert_ids_to_tokens(index))
