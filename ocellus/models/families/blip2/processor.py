"""BLIP-2's processor (MiniGPT-4's too): each image becomes num_query_tokens placeholders, the Q-Former's
outputs; MiniGPT-4 renders prompts with its own template and wraps images in <Img>...</Img>."""
from __future__ import annotations

from pathlib import Path

from ocellus.data.image import ImageProcessorConfig, preprocess
from ocellus.data.processor import image_processor_dict, Processor
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.hub.checkpoint_dir import read_json_object
from ocellus.models.families.blip2.modeling import VARIANTS, Blip2


def image_inputs_fn(image_config, num_query_tokens: int, max_pixels=None):
    """The processor's image side: each image -> pixel_values [1, 3, H, W] and num_query_tokens placeholders."""

    def image_inputs(images):
        return {"pixel_values": preprocess(images, image_config, max_pixels=max_pixels)}, [num_query_tokens] * len(images)
    return image_inputs


def _processor(tok, image_config, num_query_tokens: int, qformer_part: str = "connector", image_wrap=("", "")):
    """MiniGPT-4 (qformer_part "vision") renders prompts with its own template; BLIP-2 with the tokenizer's."""
    size = image_config.size_hw or image_config.crop_size
    if not size:
        raise ConfigError("a BLIP-2 processor needs a fixed image size (size: {height, width})")
    variant = VARIANTS["minigpt4" if qformer_part == "vision" else "blip2"]
    return Processor(tok, image_config, patch_size=size[0], num_extra_tokens=0, feature_select="full",
                     image_inputs=image_inputs_fn(image_config, num_query_tokens), image_wrap=tuple(image_wrap),
                     chat_template=variant["chat_template"], stop_strings=variant["stop_strings"])


def training_processor(model: Blip2, tok, image_config):
    return _processor(tok, image_config, model.num_query_tokens, model.qformer_part, model.image_wrap)


def processor_from_dir(directory):
    directory = Path(directory)
    image_dict = image_processor_dict(directory)
    if image_dict is None:
        raise ConfigError(f"{directory}: no preprocessor_config.json; a BLIP-2 checkpoint needs its image settings")
    cfg = read_json_object(directory / "config.json") or {}
    proc = _processor(Tokenizer.from_dir(directory), ImageProcessorConfig.from_dict(image_dict),
                      int(cfg.get("num_query_tokens", 32)), cfg.get("qformer_part", "connector"),
                      cfg.get("image_wrap") or ("", ""))
    index = cfg.get("image_token_index")
    if index is not None and index != proc.image_token_id:
        raise ConfigError(f"{directory}: the tokenizer's image token has id {proc.image_token_id}, but config.json's "
                          f"image_token_index is {index}")
    return proc
