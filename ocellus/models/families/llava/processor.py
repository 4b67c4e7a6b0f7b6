"""LLaVA's processor (LLaVA-NeXT's too, whose record names this module): the token count of an image read
from config.json, the one function the model counts with (data/image_tiling.tokens_per_image), so the two
cannot disagree. Moved here from data/processor.py, which keeps the family-neutral Processor.

Two image layouts:
- single view (LLaVA, LLaVA-1.5): every image is resized/cropped to the tower's size, pixel_values
  [N, 3, H, W], the same token count for every image;
- anyres (LLaVA-NeXT, `image_grid_pinpoints`): a global view plus the tiles of the best grid canvas,
  pixel_values [N, V, 3, H, W] and image_sizes [N, 2]; each image's token count depends on its own size.
"""
from __future__ import annotations

from pathlib import Path

from ocellus.data.image import ImageProcessorConfig
from ocellus.data.processor import _read_json, image_processor_dict, Processor
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.models.families.llava.modeling import DEFAULT_GRID_PINPOINTS
from ocellus.models.vision.vit import ViTConfig
from ocellus.models.vlm import VLM

# this processor serves LLaVA-NeXT too (anyres views), and LLaVA-OneVision's (llava_onevision/processor.py) counts
# with it
PROCESSOR_MODEL_TYPES = ("llava", "llava_next", "llava_onevision")


def training_processor(model: VLM, tok, image_config, make=Processor):
    """The recipe's processor (LLaVA-NeXT's too: with an anyres packer, its canvases and tile size). make: the
    Processor class (LLaVA-OneVision's, with its cap)."""
    vit = model.vision_tower.config
    packer = getattr(model, "packer", None)
    anyres = {} if packer is None else {"grid_pinpoints": packer.grid_pinpoints, "tile_size": packer.tile_size}
    return make(tok, image_config, patch_size=vit.patch_size, num_extra_tokens=int(vit.use_cls_token),
                feature_select=model.feature_select, image_token=tok.convert_ids_to_tokens(model.image_token_id),
                **anyres)


def count_from_config(cfg: dict, directory: Path) -> dict:
    """The token-count numbers as the model built from config.json will use them: patch_size,
    num_extra_tokens, feature_select, and for LLaVA-NeXT / OneVision grid_pinpoints / tile_size."""
    vit = ViTConfig.from_hf({**cfg, "model_type": "llava"})  # the model's own parser (defaults); llava_next nests alike
    out = dict(patch_size=vit.patch_size, num_extra_tokens=int(vit.use_cls_token),
               feature_select=cfg.get("vision_feature_select_strategy", "default"), grid_pinpoints=None)
    if cfg.get("model_type") in ("llava_next", "llava_onevision"):
        pinpoints = cfg.get("image_grid_pinpoints") or DEFAULT_GRID_PINPOINTS
        out.update(grid_pinpoints=tuple(tuple(int(x) for x in p) for p in pinpoints), tile_size=vit.image_size)
    return out


def processor_from_dir(directory, make=Processor, defaults=None) -> Processor:
    """A LLaVA / LLaVA-NeXT checkpoint directory -> its Processor (ocellus.load_processor through the registry):
    tokenizer files, preprocessor_config.json (or processor_config.json's image_processor), chat_template.jinja,
    and config.json for the token count. make: the Processor class, defaults: config.json -> with the class
    defaults of its model_type filled in (both LLaVA-OneVision's: its cap, its defaults).

    config.json is the model's truth (patch size, CLS token, feature strategy, image_token_index), read by
    count_from_config -> the token-count numbers the model uses; processor_config.json's own numbers
    (patch_size, vision_feature_select_strategy, num_additional_image_tokens, image_token) are used when there
    is no config.json and must agree with it when there is."""
    directory = Path(directory)
    _read_json(directory / "config.json")   # a config.json that is not a JSON object fails first, naming it
    image_dict = image_processor_dict(directory)
    if image_dict is None:
        raise ConfigError(f"no image processor config in {directory} (preprocessor_config.json, or "
                          f"processor_config.json with an 'image_processor' section): a text-only checkpoint? "
                          f"use ocellus.load_processor, which returns its Tokenizer")
    ptype = str(image_dict.get("image_processor_type") or "")
    if "qwen" in ptype.lower() or image_dict.get("crop_to_patches"):
        raise ConfigError(f"{directory}: image processor {ptype or 'with crop_to_patches'} (dynamic tiling / "
                          f"resolution) is not supported by Processor yet; only LLaVA and LLaVA-NeXT are")
    image_config = ImageProcessorConfig.from_dict(image_dict)
    tokenizer = Tokenizer.from_dir(directory)
    proc_cfg = _read_json(directory / "processor_config.json") or {}
    model_cfg = _read_json(directory / "config.json")
    if model_cfg is not None and defaults is not None:
        model_cfg = defaults(model_cfg)

    # What the processor config says (transformers' LlavaProcessor defaults where it is silent).
    counted = dict(patch_size=proc_cfg.get("patch_size"),
                   feature_select=proc_cfg.get("vision_feature_select_strategy"),
                   num_extra_tokens=proc_cfg.get("num_additional_image_tokens"))
    image_token = proc_cfg.get("image_token") or tokenizer.special_tokens_map.get("image_token") or "<image>"
    pinpoints = image_config.image_grid_pinpoints  # what the image processor would tile with
    if model_cfg is not None:
        if model_cfg.get("model_type") not in PROCESSOR_MODEL_TYPES:
            raise ConfigError(f"{directory}: config.json model_type {model_cfg.get('model_type')!r} is not "
                              f"LLaVA's; this processor reads {', '.join(PROCESSOR_MODEL_TYPES)}")
        truth = count_from_config(model_cfg, directory)
        for key, value in counted.items():
            if value is not None and value != truth[key]:
                raise ConfigError(
                    f"{directory}: processor_config.json has {key}={value!r} but config.json implies "
                    f"{truth[key]!r}; the processor would expand images into a different number of tokens "
                    f"than the vision tower yields. Fix processor_config.json")
        model_pinpoints = truth.pop("grid_pinpoints")
        if model_pinpoints is None and pinpoints is not None:
            raise ConfigError(f"{directory}: the image processor has image_grid_pinpoints (anyres views) but the "
                              f"model ({model_cfg.get('model_type')}) takes one view per image")
        if model_pinpoints is not None and pinpoints is not None and tuple(model_pinpoints) != tuple(pinpoints):
            raise ConfigError(f"{directory}: image_grid_pinpoints differ between the image processor "
                              f"{[list(p) for p in pinpoints]} and config.json "
                              f"{[list(p) for p in model_pinpoints]}")
        counted, pinpoints = truth, model_pinpoints
    else:
        if counted["patch_size"] is None:
            raise ConfigError(f"{directory}: neither config.json nor processor_config.json gives the vision "
                              f"patch size, so the number of tokens per image is unknown")
        counted["feature_select"] = counted["feature_select"] or "default"
        counted["num_extra_tokens"] = counted["num_extra_tokens"] or 0
        if pinpoints is not None:  # the tower's input size is the crop (or fixed) size of a view
            view = image_config.crop_size or image_config.size_hw or (image_config.shortest_edge,)
            counted["tile_size"] = view[0]
    processor = make(tokenizer, image_config, image_token=image_token, grid_pinpoints=pinpoints,
                     pad_to_square=bool(image_dict.get("do_pad")) and "llava" in ptype.lower(),
                     chat_template=proc_cfg.get("chat_template") if not tokenizer.chat_template else None,
                     **counted)
    if model_cfg is not None:
        index = model_cfg.get("image_token_index", model_cfg.get("image_token_id"))
        if index is not None and int(index) != processor.image_token_id:
            raise ConfigError(f"{directory}: the tokenizer's image token {image_token!r} has id "
                              f"{processor.image_token_id}, but config.json's image_token_index is {index}")
    return processor
