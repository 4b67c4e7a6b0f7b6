"""InternVL's processor: dynamic tiling (+ thumbnail) of each image into tiles of the tower's size, each tile
`per_tile` context tokens, the image written `<img>` + tokens + `</img>` (InternVLProcessor's)."""
from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

from ocellus.data.image import ImageProcessorConfig
from ocellus.data.image_tiling import preprocess_internvl
from ocellus.data.processor import _read_json, image_processor_dict, Processor
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.models.families.internvl.checkpoint import internvl_hf_config
from ocellus.models.families.internvl.modeling import _tower_config, tokens_per_tile
from ocellus.models.vlm import VLM

IMAGE_WRAP = ("<img>", "</img>")                                    # InternVLProcessor's start/end image tokens

def _internvl_image_inputs(images, *, image_config, use_thumbnail: bool, per_tile: int):
    """Loaded images -> ({"pixel_values": [sum tiles, 3, S, S]}, context tokens per image)."""
    pixel_values, num_tiles = preprocess_internvl(images, image_config, use_thumbnail=use_thumbnail, max_pixels=None)
    return {"pixel_values": pixel_values}, [n * per_tile for n in num_tiles]


def make_processor(tok, image_config, model_cfg: dict, per_tile: int, image_token: str, chat_template=None,
                   image_wrap=IMAGE_WRAP):
    """InternVL's processor: tiles (image_config.crop_to_patches / min_patches / max_patches, tile size
    size_hw) and `image_wrap[0] + image_token * (per_tile * tiles) + image_wrap[1]` per image."""
    tile = _tower_config(model_cfg["vision_config"]).image_size
    if image_config.size_hw != (tile, tile):   # per_tile counts tower-sized tiles: any other size is miscounted
        size = "x".join(map(str, image_config.size_hw)) if image_config.size_hw else "no"
        raise ConfigError(f"InternVL: the image processor makes tiles of {size} pixels but the vision tower's "
                          f"image_size is {tile}; set size {{'height': {tile}, 'width': {tile}}} in "
                          f"preprocessor_config.json")
    image_inputs = functools.partial(_internvl_image_inputs, image_config=image_config, per_tile=per_tile,
                                     use_thumbnail=bool(model_cfg.get("use_thumbnail", True)))
    return Processor(tok, image_config, patch_size=1, image_token=image_token, chat_template=chat_template,
                     image_inputs=image_inputs, image_wrap=image_wrap)


def _tiling(image_config, model_cfg: dict):
    """The image config with InternVL's tiling: tiles of the tower's size, config.json's tile bounds."""
    tile = _tower_config(model_cfg["vision_config"]).image_size
    return replace(image_config, size_hw=(tile, tile), crop_to_patches=True,
                   min_patches=int(model_cfg.get("min_dynamic_patch", 1)),
                   max_patches=int(model_cfg.get("max_dynamic_patch", 12)))


def training_processor(model: VLM, tok, image_config):
    """The recipe's processor: the recipe's mean/std, tiles of the tower's size, the model's tiling."""
    cfg = internvl_hf_config(model)
    return make_processor(tok, _tiling(image_config, cfg), cfg, tokens_per_tile(cfg),
                          tok.convert_ids_to_tokens(model.image_token_id))


def export_processor(model: VLM, tok, image_config, path) -> None:
    """preprocessor_config.json as transformers' GotOcr2ImageProcessor (InternVL's) writes it."""
    icfg = _tiling(image_config, internvl_hf_config(model))
    h, w = icfg.size_hw
    (Path(path) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "GotOcr2ImageProcessor", "do_resize": True, "size": {"height": h, "width": w},
        "crop_to_patches": True, "min_patches": icfg.min_patches, "max_patches": icfg.max_patches,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(icfg.image_mean),
        "image_std": list(icfg.image_std), "resample": int(icfg.resample)}, indent=2))


def processor_from_dir(directory):
    """An InternVL checkpoint dir: tokenizer (its context/start/end image tokens; else config.json's
    image_token_id and <img>, </img>), preprocessor_config.json (GotOcr2), config.json for the per-tile count."""
    directory = Path(directory)
    model_cfg = _read_json(directory / "config.json")
    image_dict = image_processor_dict(directory)
    if model_cfg is None or image_dict is None:
        raise ConfigError(f"{directory}: an InternVL processor needs config.json and preprocessor_config.json")
    tok = Tokenizer.from_dir(directory)
    named = tok.special_tokens_map
    # transformers' tokenizers name it context_image_token; a recipe's tokenizer has config.json's id only
    image_token = (named.get("context_image_token")
                   or tok.convert_ids_to_tokens(int(model_cfg.get("image_token_id", -1))))
    if image_token is None:
        raise ConfigError(f"{directory}: the tokenizer has no context_image_token and no token with config.json's "
                          f"image_token_id {model_cfg.get('image_token_id')}")
    wrap = (named.get("start_image_token", IMAGE_WRAP[0]), named.get("end_image_token", IMAGE_WRAP[1]))
    per_tile = tokens_per_tile(model_cfg)
    proc_cfg = _read_json(directory / "processor_config.json") or {}
    if proc_cfg.get("image_seq_length") not in (None, per_tile):
        raise ConfigError(f"{directory}: processor_config.json has image_seq_length={proc_cfg['image_seq_length']} "
                          f"but config.json's tower and downsample_ratio give {per_tile} tokens per tile")
    # InternVLProcessor calls its image processor with crop_to_patches=True whatever the file says (the hub's -hf
    # checkpoints save false there): an InternVL image is always tiled
    image_config = replace(ImageProcessorConfig.from_dict(image_dict), crop_to_patches=True)
    proc = make_processor(tok, image_config, model_cfg, per_tile, image_token,
                          chat_template=proc_cfg.get("chat_template") if not tok.chat_template else None,
                          image_wrap=wrap)
    if int(model_cfg.get("image_token_id", proc.image_token_id)) != proc.image_token_id:
        raise ConfigError(f"{directory}: the tokenizer's image token {image_token!r} has id {proc.image_token_id}, "
                          f"but config.json's image_token_id is {model_cfg['image_token_id']}")
    return proc
