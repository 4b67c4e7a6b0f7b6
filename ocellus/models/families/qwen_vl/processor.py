"""Qwen-VL's processor: every image becomes the resampler's fixed number of tokens, written
"Picture n: <img>" + tokens + "</img>\\n" (numbered per sample, as QwenLM/Qwen-VL's tokenizer)."""
from __future__ import annotations

import functools
from pathlib import Path

from ocellus.data.image import ImageProcessorConfig, preprocess
from ocellus.data.processor import _read_json, image_processor_dict, Processor
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.models.vlm import VLM

IMAGE_WRAP = ("Picture {n}: <img>", "</img>\n")     # Qwen-VL's image markup; {n} numbers images per sample

def _qwen_vl_image_inputs(images, *, image_config, num_queries: int):
    """Loaded images -> ({"pixel_values": [N, 3, S, S]}, num_queries tokens per image)."""
    return {"pixel_values": preprocess(images, image_config, max_pixels=None)}, [num_queries] * len(images)


def make_processor(tok, image_config, num_queries: int, image_token: str, chat_template=None):
    image_inputs = functools.partial(_qwen_vl_image_inputs, image_config=image_config, num_queries=num_queries)
    return Processor(tok, image_config, patch_size=1, image_token=image_token, chat_template=chat_template,
                     image_inputs=image_inputs, image_wrap=IMAGE_WRAP)


def training_processor(model: VLM, tok, image_config):
    return make_processor(tok, image_config, model.multi_modal_projector.num_queries,
                          tok.convert_ids_to_tokens(model.image_token_id))


def processor_from_dir(directory):
    """config.json (image_token_id, resampler.num_queries) + preprocessor_config.json + the tokenizer."""
    directory = Path(directory)
    cfg, image_dict = _read_json(directory / "config.json"), image_processor_dict(directory)
    if cfg is None or image_dict is None:
        raise ConfigError(f"{directory}: a Qwen-VL processor needs config.json and preprocessor_config.json")
    tok = Tokenizer.from_dir(directory)
    image_token = tok.convert_ids_to_tokens(int(cfg["image_token_id"]))
    if image_token is None:
        raise ConfigError(f"{directory}: config.json's image_token_id {cfg['image_token_id']} is not in the tokenizer")
    return make_processor(tok, ImageProcessorConfig.from_dict(image_dict),
                          int((cfg.get("resampler") or {}).get("num_queries", 256)), image_token)
