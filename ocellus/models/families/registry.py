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

from ocellus.errors import ConfigError

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
