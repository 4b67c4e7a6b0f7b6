"""LLaVA-NeXT (LLaVA-1.6; Liu et al. 2024, "LLaVA-NeXT: Improved reasoning, OCR, and world
knowledge", the LLaVA-NeXT blog): LLaVA-1.5 (CLIP ViT -> 2-layer GELU MLP -> Llama-family
decoder, early fusion) seeing high-resolution images through "AnyRes": a global view plus the
tiles of a grid canvas, packed with a learned newline per feature row
(ocellus/models/connectors/anyres.py).

Matches transformers' LlavaNextForConditionalGeneration (tests/parity/test_llava_next_parity.py).
config.json: LLaVA's fields (vision_config, text_config, image_token_index, vision_feature_layer,
vision_feature_select_strategy, projector_hidden_act, multimodal_projector_bias) plus
image_grid_pinpoints, the candidate canvases (H, W) in pixels, multiples of vision_config.image_size.

The recipe side (`model.architecture: llava_next`): `compose` is LLaVA's (pretrained ViT and
decoder, new MLP connector) plus a new image_newline and the canvases (model.image_grid_pinpoints, default
transformers' own scaled to tiles of the tower's image_size); the processor is LLaVA's with anyres views.
"""
from __future__ import annotations

from ocellus.errors import ConfigError
from ocellus.models.connectors.anyres import AnyresPacker
from ocellus.models.families.common import check_spec
from ocellus.models.families.llava.modeling import (
    DEFAULT_GRID_PINPOINTS,
    SPEC_KEYS as LLAVA_SPEC_KEYS,
    build_llava,
    compose_config,
    load_parts,
)
from ocellus.models.vision.vit import ViTConfig
from ocellus.models.vlm import VLM

MODEL_TYPES = ("llava_next",)
SPEC_KEYS = LLAVA_SPEC_KEYS | {"image_grid_pinpoints"}


def build_llava_next(cfg: dict, *, max_patches: int | None = None, cls: type[VLM] = VLM) -> VLM:
    """config.json dict -> VLM with an AnyresPacker. The tower, projector and decoder are LLaVA-1.5's
    (build_llava checks and builds them); the packer adds the newline and the grid geometry. max_patches and
    cls: LLaVA-OneVision's anyres_max_N cap and its VLM subclass (llava_onevision/modeling.py)."""
    base = build_llava(cfg)
    tower = base.vision_tower.config
    pinpoints = cfg.get("image_grid_pinpoints") or DEFAULT_GRID_PINPOINTS
    packer = AnyresPacker(base.config.hidden_size, pinpoints, tile_size=tower.image_size,
                          patch_size=tower.patch_size, feature_select=base.feature_select,
                          num_extra_tokens=int(tower.use_cls_token), max_patches=max_patches)
    model = cls(base.vision_tower, base.multi_modal_projector, base.language_model,
                image_token_id=base.image_token_id, feature_layer=base.feature_layer,
                feature_select=base.feature_select, config=base.config, packer=packer)
    model.hf_config = dict(cfg)
    model.family_name = "llava_next"  # the VLM class is shared with LLaVA: save must pick this family
    return model


# ---- the recipe side (model.architecture: llava_next) ----------------------------------------------------
def default_pinpoints(tile: int) -> list[list[int]]:
    """transformers' default canvases (1x2, 2x1, 2x2, 3x1, 1x3 tiles of 336 px) in tiles of `tile` px."""
    return [[h // 336 * tile, w // 336 * tile] for h, w in DEFAULT_GRID_PINPOINTS]


def compose(spec: dict, tok) -> VLM:
    """A recipe's LLaVA-NeXT: LLaVA's composition (the ViT of spec["vision_from"], a new MLP connector,
    the decoder of spec["llm_from"]; connector / feature_layer / feature_select / image_token as LLaVA's)
    + a new learned image_newline, with spec["image_grid_pinpoints"] as the canvases (H, W), multiples of
    the tower's image_size (default: default_pinpoints(image_size)). The tiles need exactly
    (image_size / patch)^2 features, so a CLIP tower takes feature_select "default" (CLS dropped)."""
    check_spec(spec, SPEC_KEYS, "llava_next")
    cfg = compose_config(spec, tok)
    tile = ViTConfig.from_hf(cfg["vision_config"]).image_size
    pinpoints = spec.get("image_grid_pinpoints") or default_pinpoints(tile)
    if not (isinstance(pinpoints, list) and all(isinstance(p, list) and len(p) == 2 and
                                                all(isinstance(x, int) and x > 0 for x in p) for p in pinpoints)):
        raise ConfigError(f"llava_next model.image_grid_pinpoints must be a list of [height, width] pixel pairs "
                          f"(multiples of the tower's image_size {tile}), got {pinpoints!r}")
    cfg.update(architectures=["LlavaNextForConditionalGeneration"], model_type="llava_next",
               image_grid_pinpoints=pinpoints)
    return load_parts(build_llava_next(cfg), spec)
