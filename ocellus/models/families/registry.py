"""The vision-language families a recipe can compose and a processor can serve.

A recipe with `task: vlm` names its family in `model.architecture` (default llava). Each family
module provides:
  compose(spec, tok) -> nn.Module          the model of a recipe: pretrained parts from
                                           spec["vision_from"] / spec["llm_from"] + a new connector
  training_processor(model, tok, image_config) -> Processor
                                           what turns a recipe's conversations + images into the
                                           model's inputs (training data, eval, export)
  processor_from_dir(directory) -> Processor   the same for an exported checkpoint directory
  MODEL_TYPES                              config.json model_type values it serves
Modules are imported on first use, so one family's imports never slow another's. One module may serve
several names (qwen2_vl, qwen2_5_vl): its compose reads the variant from spec["architecture"].
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ocellus.data.processor import Processor, image_processor_dict, read_model_type
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.hub.resolve import resolve

VLM_FAMILIES: dict[str, str] = {
    "llava": "ocellus.models.families.llava",
    "llava_next": "ocellus.models.families.llava_next",
    "blip2": "ocellus.models.families.blip2",
    "flamingo": "ocellus.models.families.flamingo",
    "qwen_vl": "ocellus.models.families.qwen_vl",
    "qwen2_vl": "ocellus.models.families.qwen2_vl",
    "qwen2_5_vl": "ocellus.models.families.qwen2_vl",
    "internvl": "ocellus.models.families.internvl",
}


def family_module(name: str) -> ModuleType:
    if name not in VLM_FAMILIES:
        raise ConfigError(f"unknown vision-language architecture {name!r}; choose from {', '.join(VLM_FAMILIES)}")
    try:
        return importlib.import_module(VLM_FAMILIES[name])
    except ModuleNotFoundError as e:
        if e.name == VLM_FAMILIES[name]:
            raise ConfigError(f"architecture {name!r} is not implemented in this version of Ocellus") from None
        raise


def module_for_model_type(model_type: str) -> ModuleType | None:
    """The family module whose MODEL_TYPES include config.json's model_type (None if none does)."""
    for name, path in VLM_FAMILIES.items():
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as e:
            if e.name == path:
                continue
            raise
        if model_type in getattr(module, "MODEL_TYPES", ()):
            return module
    return None


def load_processor(path_or_hub_id):
    """A checkpoint's input side (`ocellus.load_processor`): a `Processor` (tokenizer + image processor + chat
    template + image-token expansion) when the directory has an image processor config (preprocessor_config.json,
    or processor_config.json's "image_processor" section as transformers 5 writes it), else its `Tokenizer`.
    The family that serves config.json's model_type builds the processor (LLaVA's counts its tokens from
    config.json); a directory no family claims gets Processor.from_dir."""
    directory = resolve(path_or_hub_id)
    if image_processor_dict(directory) is None:
        return Tokenizer.from_dir(directory)
    model_type = read_model_type(directory)
    family = module_for_model_type(model_type) if model_type is not None else None
    if family is not None:
        return family.processor_from_dir(directory)
    return Processor.from_dir(directory)
