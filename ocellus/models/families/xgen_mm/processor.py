"""xGen-MM's processor: LLaVA-NeXT's views (a global view + the tiles of the best canvas, data/image_tiling.py),
each image's placeholder written V_i * L times (tokens_per_image("token_sampler"), the count the model's token
sampler uses too). pixel_values are the real views flattened, [sum V_i, 3, S, S] (no zero-padded views, so
samples of different tile counts concatenate into one training batch), with image_sizes [N, 2] (original H, W)."""
from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

from ocellus.data.image import ImageProcessorConfig
from ocellus.data.image_tiling import (_anyres_sizes, anyres_num_views, check_anyres_views, preprocess_anyres,
                                      tokens_per_image)
from ocellus.data.processor import _read_json, image_processor_dict, Processor
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.models.connectors.anyres import real_views
from ocellus.models.families.xgen_mm.modeling import MODEL_TYPES, pinpoints_of, sampler_config
from ocellus.models.vision.vit import ViTConfig
from ocellus.models.vlm import VLM


def _xgen_mm_image_inputs(images, *, image_config, grid_pinpoints, tile_size: int, num_latents: int):
    """Loaded images -> ({"pixel_values": [sum V_i, 3, S, S], "image_sizes": [N, 2]}, V_i * L per image)."""
    padded, sizes = preprocess_anyres(images, image_config, max_pixels=None)         # [N, V, 3, S, S], [N, 2]
    views = real_views(padded, sizes, functools.partial(anyres_num_views, grid_pinpoints=grid_pinpoints,
                                                        tile_size=tile_size))        # [sum V_i, 3, S, S]
    counts = [tokens_per_image("token_sampler", image_size=(int(h), int(w)), grid_pinpoints=grid_pinpoints,
                               tile_size=tile_size, num_latents=num_latents) for h, w in sizes.tolist()]
    return {"pixel_values": views, "image_sizes": sizes}, counts


def make_processor(tok, image_config, *, grid_pinpoints, tile_size: int, num_latents: int, image_token: str,
                   chat_template=None) -> Processor:
    """The Processor of an xGen-MM whose tower takes tile_size x tile_size views. The image config's tile
    (crop_size, else size) must be the tower's: a view of another size is not what the ViT reads."""
    pinpoints = [tuple(int(x) for x in p) for p in grid_pinpoints]
    image_config = replace(image_config, image_grid_pinpoints=pinpoints)            # preprocess_anyres reads them
    _, tile = _anyres_sizes(image_config)
    if tile != tile_size:
        raise ConfigError(f"xGen-MM: the image processor cuts {tile} px tiles but the vision tower reads "
                          f"{tile_size} px views; set crop_size (or size) to {tile_size}")
    check_anyres_views(image_config, tile_size, "xGen-MM")   # and the views, after resize / crop, are tiles
    image_inputs = functools.partial(_xgen_mm_image_inputs, image_config=image_config, grid_pinpoints=pinpoints,
                                     tile_size=tile_size, num_latents=num_latents)
    return Processor(tok, image_config, patch_size=1, image_token=image_token, chat_template=chat_template,
                     image_inputs=image_inputs)


def training_processor(model: VLM, tok, image_config) -> Processor:
    sampler = model.packer
    return make_processor(tok, image_config, grid_pinpoints=sampler.grid_pinpoints, tile_size=sampler.tile_size,
                          num_latents=sampler.perceiver.num_latents,
                          image_token=tok.convert_ids_to_tokens(model.image_token_id))


def processor_from_dir(directory) -> Processor:
    """config.json (image_grid_pinpoints, vision_config.image_size, vision_tokenizer_config.num_latents,
    image_token_index) + preprocessor_config.json (view size, mean / std) + the tokenizer. config.json is the
    model's truth: canvases the image processor names must be the same."""
    directory = Path(directory)
    cfg, image_dict = _read_json(directory / "config.json"), image_processor_dict(directory)
    if cfg is None or image_dict is None:
        raise ConfigError(f"{directory}: an xGen-MM processor needs config.json and preprocessor_config.json")
    if cfg.get("model_type") not in MODEL_TYPES:
        raise ConfigError(f"{directory}: config.json model_type {cfg.get('model_type')!r} is not xGen-MM's "
                          f"({', '.join(MODEL_TYPES)})")
    tile = ViTConfig.from_hf(cfg.get("vision_config") or {}).image_size
    pinpoints = pinpoints_of(cfg.get("image_grid_pinpoints"), tile)
    image_config = ImageProcessorConfig.from_dict(image_dict)
    named = image_config.image_grid_pinpoints
    if named is not None and [list(p) for p in named] != [list(p) for p in pinpoints]:
        raise ConfigError(f"{directory}: image_grid_pinpoints differ between the image processor "
                          f"{[list(p) for p in named]} and config.json {pinpoints}")
    if not isinstance(cfg.get("image_token_index"), int):
        raise ConfigError(f"{directory}: config.json needs image_token_index (the <image> id), got "
                          f"{cfg.get('image_token_index')!r}")
    tok = Tokenizer.from_dir(directory)
    image_token = tok.convert_ids_to_tokens(cfg["image_token_index"])
    if image_token is None:
        raise ConfigError(f"{directory}: config.json's image_token_index {cfg['image_token_index']} is not in the "
                          f"tokenizer")
    return make_processor(tok, image_config, grid_pinpoints=pinpoints, tile_size=tile,
                          num_latents=sampler_config(cfg.get("vision_tokenizer_config"))["num_latents"],
                          image_token=image_token)
