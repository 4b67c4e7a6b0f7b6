"""LLaVA-NeXT (LLaVA-1.6; Liu et al. 2024, "LLaVA-NeXT: Improved reasoning, OCR, and world
knowledge", the LLaVA-NeXT blog): LLaVA-1.5 (CLIP ViT -> 2-layer GELU MLP -> Llama-family
decoder, early fusion) seeing high-resolution images through "AnyRes": a global view plus the
tiles of a grid canvas, packed with a learned newline per feature row
(ocellus/models/connectors/anyres.py).

Matches transformers' LlavaNextForConditionalGeneration (tests/parity/test_llava_next_parity.py).
config.json: LLaVA's fields (vision_config, text_config, image_token_index, vision_feature_layer,
vision_feature_select_strategy, projector_hidden_act, multimodal_projector_bias) plus
image_grid_pinpoints, the candidate canvases (H, W) in pixels, multiples of vision_config.image_size.

Checkpoint names: LLaVA's two layouts plus the newline vector, `image_newline` on the hub
(what transformers 5.23's save_pretrained writes too) and `model.image_newline` in transformers 5's
in-memory layout. Ours is `packer.image_newline`. We save the hub layout.
"""
from __future__ import annotations

from ocellus.errors import ConfigError
from ocellus.hub.keymap import KeyMap
from ocellus.models.connectors.anyres import AnyresPacker
from ocellus.models.families.llava import LLAVA_KEYS, build_llava, llava_hf_config
from ocellus.models.vlm import VLM

# transformers' LlavaNextConfig default, for a config.json that leaves it out
DEFAULT_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

LLAVA_NEXT_KEYS = KeyMap(
    rules=(
        ("packer.image_newline", "image_newline"),          # hub layout: what we write
        *LLAVA_KEYS.rules,                                   # LLaVA's, hub layout first
        ("packer.image_newline", "model.image_newline"),    # transformers 5 in-memory, read only
    ),
    drop=LLAVA_KEYS.drop,
)


def build_llava_next(cfg: dict) -> VLM:
    """config.json dict -> VLM with an AnyresPacker. The tower, projector and decoder are LLaVA-1.5's
    (build_llava checks and builds them); the packer adds the newline and the grid geometry."""
    base = build_llava(cfg)
    tower = base.vision_tower.config
    pinpoints = cfg.get("image_grid_pinpoints") or DEFAULT_GRID_PINPOINTS
    packer = AnyresPacker(base.config.hidden_size, pinpoints, tile_size=tower.image_size,
                          patch_size=tower.patch_size, feature_select=base.feature_select,
                          num_extra_tokens=int(tower.use_cls_token))
    model = VLM(base.vision_tower, base.multi_modal_projector, base.language_model,
                image_token_id=base.image_token_id, feature_layer=base.feature_layer,
                feature_select=base.feature_select, config=base.config, packer=packer)
    model.hf_config = dict(cfg)
    model.family_name = "llava_next"  # the VLM class is shared with LLaVA: save must pick this family
    return model


def llava_next_hf_config(model: VLM) -> dict:
    if getattr(model, "packer", None) is None:
        raise ConfigError("llava_next_hf_config: this VLM has no anyres packer; save it as LLaVA")
    out = llava_hf_config(model)
    out.update(architectures=["LlavaNextForConditionalGeneration"], model_type="llava_next",
               image_grid_pinpoints=[list(p) for p in model.packer.grid_pinpoints])
    return out
