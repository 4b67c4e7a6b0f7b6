"""LLaVA-OneVision checkpoints: LLaVA-NeXT's key table (the same names: vision_tower, multi_modal_projector,
image_newline, language_model) and config.json with model_type llava_onevision and the anyres_max_N cap."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.models.families.common import tied_lm_head
from ocellus.models.families.llava_next.checkpoint import LLAVA_NEXT_KEYS, llava_next_hf_config
from ocellus.models.families.llava_onevision.modeling import ARCHITECTURE, LlavaOnevision, build_llava_onevision


def llava_onevision_hf_config(model: LlavaOnevision) -> dict:
    out = llava_next_hf_config(model)
    out.update(architectures=[ARCHITECTURE], model_type="llava_onevision",
               vision_aspect_ratio=f"anyres_max_{model.packer.max_patches}")
    return out


def family(architecture: str | None = None) -> Family:
    """The hub Family (ocellus/hub/families.py) of LlavaOnevisionForConditionalGeneration."""
    return Family(name="llava_onevision", model_class=LlavaOnevision, build=build_llava_onevision,
                  keymap=LLAVA_NEXT_KEYS, hf_config=llava_onevision_hf_config, tied=tied_lm_head)
