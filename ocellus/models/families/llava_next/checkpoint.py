"""LLaVA-NeXT checkpoints: LLaVA's two layouts plus the newline vector, `image_newline` on the hub (what
transformers 5.23's save_pretrained writes too) and `model.image_newline` in transformers 5's in-memory layout.
Ours is `packer.image_newline`. We save the hub layout."""
from __future__ import annotations

from ocellus.errors import ConfigError
from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.common import tied_lm_head
from ocellus.models.families.llava.checkpoint import LLAVA_KEYS, llava_hf_config
from ocellus.models.families.llava_next.modeling import build_llava_next
from ocellus.models.vlm import VLM

LLAVA_NEXT_KEYS = KeyMap(
    rules=(
        ("packer.image_newline", "image_newline"),          # hub layout: what we write
        *LLAVA_KEYS.rules,                                   # LLaVA's, hub layout first
        ("packer.image_newline", "model.image_newline"),    # transformers 5 in-memory, read only
    ),
    drop=LLAVA_KEYS.drop,
)


def llava_next_hf_config(model: VLM) -> dict:
    if getattr(model, "packer", None) is None:
        raise ConfigError("llava_next_hf_config: this VLM has no anyres packer; save it as LLaVA")
    out = llava_hf_config(model)
    out.update(architectures=["LlavaNextForConditionalGeneration"], model_type="llava_next",
               image_grid_pinpoints=[list(p) for p in model.packer.grid_pinpoints])
    return out


def family(architecture: str | None = None) -> Family:
    """The hub Family (ocellus/hub/families.py) of LlavaNextForConditionalGeneration."""
    return Family(name="llava_next", model_class=VLM, build=build_llava_next, keymap=LLAVA_NEXT_KEYS,
                  hf_config=llava_next_hf_config, tied=tied_lm_head)
