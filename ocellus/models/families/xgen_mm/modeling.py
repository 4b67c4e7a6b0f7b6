"""xGen-MM / BLIP-3 (Xue et al. 2024, "xGen-MM (BLIP-3): A Family of Open Large Multimodal Models",
section 3 and Fig. 2; reference: Salesforce's modeling_xgenmm.py on the hub and salesforce/LAVIS, branch
xgen-mm): BLIP-2's Q-Former replaced by a Perceiver Resampler that samples every any-resolution view on
its own, then early fusion into a decoder.

    image (H, W) --preprocess_anyres--> V_i = 1 + rows*cols views (global view + tiles, LLaVA-NeXT's
    canvases) --ViT, every view--> [V_i, P, Dv] --perceiver per view (connectors/token_sampler.py)-->
    [V_i, L, Dv] --projection Linear(Dv, D)--> [V_i * L, D] written at the image's V_i * L <image> slots

The projection follows the perceiver, at the tower's width, as Salesforce's PerceiverResampler(dim=Dv,
dim_inner=D). The perceiver has no spatial positions, so it reads every token the tower gives (feature
select "full" by default; CLIP's CLS is one more key); the views stay apart, so no view's tokens depend
on another view's pixels. The vision tokenizer is the VLM's `packer` (its `multi_modal_projector` is an
identity): the VLM selects the real views, runs the tower and hands the features to it.

No transformers class exists for xGen-MM (the hub's checkpoints run remote code), so this is our own
layout: architecture "OcellusXGenMMForConditionalGeneration", model_type "ocellus_xgen_mm"; config.json =
vision_config (a CLIPVisionConfig / SiglipVisionConfig), text_config (Llama / Qwen2),
vision_tokenizer_config {depth, num_latents, heads, head_dim, ff_mult} (xGen-MM's 6 / 128 / 16 / 96 / 4 where
left out), image_grid_pinpoints (canvases (H, W), multiples of the tower's image_size), image_token_index,
vision_feature_layer, vision_feature_select_strategy. Tensor names: checkpoint.py; the processor:
processor.py.
"""
from __future__ import annotations

import torch
from torch import nn

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.models.connectors.perceiver import PerceiverConfig, PerceiverResampler
from ocellus.models.connectors.token_sampler import TokenSampler
from ocellus.models.families.common import check_spec, feature_layer, image_token_id, part_dirs, text_config
from ocellus.models.families.llava_next.modeling import default_pinpoints
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.models.vlm import VLM

ARCHITECTURE = "OcellusXGenMMForConditionalGeneration"
MODEL_TYPES = ("ocellus_xgen_mm",)
# Salesforce's PerceiverResampler defaults (xgen-mm-phi3-mini: 128 tokens per view)
PERCEIVER_DEFAULTS = {"depth": 6, "num_latents": 128, "heads": 16, "head_dim": 96, "ff_mult": 4}
SPEC_KEYS = frozenset({"architecture", "vision_from", "llm_from", "image_token", "feature_layer", "feature_select",
                       "image_grid_pinpoints", "perceiver", "init_from"})


class VisionTokenizer(TokenSampler):
    """xGen-MM's vision tokenizer: the per-view token sampler (a perceiver at the tower's width Dv, L latents
    per view), then `projection` to the decoder's width D.
    (view features [sum V_i, P, Dv], image_sizes [N, 2]) -> N sequences [V_i * L, D]."""

    def __init__(self, perceiver: PerceiverResampler, grid_pinpoints, tile_size: int, text_dim: int):
        super().__init__(perceiver, grid_pinpoints, tile_size)
        self.projection = nn.Linear(perceiver.config.dim, text_dim)

    def forward(self, features: torch.Tensor, image_sizes) -> list[torch.Tensor]:
        return [self.projection(t) for t in super().forward(features, image_sizes)]    # N x [V_i * L, D]


def pinpoints_of(value, tile: int) -> list[list[int]]:
    """image_grid_pinpoints as config.json / a recipe gives it: [height, width] pixel pairs."""
    if not (isinstance(value, list) and value and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                        for x in p) for p in value)):
        raise ConfigError(f"xGen-MM image_grid_pinpoints must be a non-empty list of [height, width] pixel pairs "
                          f"(multiples of the tower's image_size {tile}), got {value!r}")
    return value


def sampler_config(value) -> dict:
    """vision_tokenizer_config -> the perceiver's fields (xGen-MM's defaults filled in). Its width is the
    tower's, and it reads still views only: dim and max_num_frames are not choices here."""
    cfg = dict(value or {})
    unknown = set(cfg) - set(PERCEIVER_DEFAULTS) - {"layer_norm_eps"}
    if unknown:
        raise ConfigError(f"xGen-MM vision_tokenizer_config: unknown fields {sorted(unknown)}; known: "
                          f"{sorted(PERCEIVER_DEFAULTS)} and layer_norm_eps (the width is the vision tower's)")
    return {**PERCEIVER_DEFAULTS, **cfg}


def build_xgen_mm(cfg: dict) -> VLM:
    """config.json dict -> VLM(ViT, identity, decoder, packer=VisionTokenizer)."""
    for key in ("vision_config", "text_config", "image_token_index", "image_grid_pinpoints"):
        if cfg.get(key) is None:
            raise ConfigError(f"xGen-MM config.json has no {key}")
    text = text_config(cfg, "xGen-MM")
    vision = VisionTransformer(ViTConfig.from_hf(cfg["vision_config"]))
    decoder = DecoderLM(DecoderConfig.from_hf(text))
    layer, select = feature_layer(cfg, "xGen-MM", "full")
    tile = vision.config.image_size
    perceiver = PerceiverResampler(PerceiverConfig.from_dict(
        {**sampler_config(cfg.get("vision_tokenizer_config")), "dim": vision.config.hidden_size}))
    tokenizer = VisionTokenizer(perceiver, pinpoints_of(cfg["image_grid_pinpoints"], tile), tile,
                                decoder.config.hidden_size)
    model = VLM(vision, nn.Identity(), decoder, image_token_id=int(cfg["image_token_index"]), feature_layer=layer,
                feature_select=select, config=decoder.config, packer=tokenizer)
    model.hf_config = dict(cfg)
    model.family_name = "xgen_mm"   # VLM is LLaVA's class too: ocellus.save picks this family by its name
    return model


# ---- the recipe side (model.architecture: xgen_mm) -------------------------------------------------------
def compose(spec: dict, tok) -> VLM:
    """A recipe's xGen-MM: the ViT of spec["vision_from"] and the decoder of spec["llm_from"], a new vision
    tokenizer (spec["perceiver"]: depth, num_latents, heads, head_dim, ff_mult; a new projection), the
    canvases spec["image_grid_pinpoints"] (default: LLaVA-NeXT's / xGen-MM's 1x2, 2x1, 2x2, 3x1, 1x3 tiles of
    the tower's image_size); feature_layer (-1), feature_select ("full"), image_token (<image>)."""
    check_spec(spec, SPEC_KEYS, "xgen_mm")
    vision_dir, llm_dir = part_dirs(spec)
    vision_cfg = read_config(vision_dir)
    tile = ViTConfig.from_hf(vision_cfg).image_size
    text = read_config(llm_dir)
    text.pop("architectures", None)
    model = build_xgen_mm({
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPES[0], "vision_config": vision_cfg,
        "text_config": text, "image_token_index": image_token_id(tok, spec),
        "image_grid_pinpoints": spec.get("image_grid_pinpoints") or default_pinpoints(tile),
        "vision_tokenizer_config": sampler_config(spec.get("perceiver")),
        "vision_feature_layer": spec.get("feature_layer", -1),
        "vision_feature_select_strategy": spec.get("feature_select", "full")})
    model.vision_tower.load_state_dict(load_model(vision_dir).state_dict())
    model.language_model.load_state_dict(load_model(llm_dir).state_dict())
    return model
