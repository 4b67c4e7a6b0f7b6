"""Qwen2-VL (Wang et al. 2024, "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World
at Any Resolution") and Qwen2.5-VL (Bai et al. 2025): a native-resolution ViT
(models/vision/qwen2_vit.py) -> 2x2 patch merger (models/connectors/merger.py) -> Qwen2 decoder
with M-RoPE (nn/mrope.py), early fusion.

    pixel_values [sum P, C*2*14*14] + image_grid_thw [N, 3] --ViT--> [sum P, Dv] --merger--> [sum P/4, D]
    --fusion.splice at <|image_pad|> (videos: pixel_values_videos / video_grid_thw at <|video_pad|>)-->
    decoder with position_ids [3, B, T] from input_ids + grids (nn/mrope.rope_index)

Generation: the prefill computes the M-RoPE ids and each row's rope delta (max id + 1 - tokens),
kept on the KV cache; a decode step at plain position p uses p + delta on all three axes
(transformers' `rope_deltas`).

Matches transformers' Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration
(tests/parity/test_qwen2_vl_parity.py). Config: hub checkpoints with a text_config, and 4.x ones whose text
fields sit at the top level (rope_scaling type "mrope"); the key table and config writer: checkpoint.py.

The recipe side (model.architecture qwen2_vl or qwen2_5_vl): `compose` builds a fresh small ViT (or takes a
scene-pretrained one, vision_from: tower.py's format) + a new merger of that variant on a pretrained decoder.
processor.py makes the Processor (data/processor.py) whose image path is Qwen2-VL's dynamic resolution
(`Qwen2VLImages`), videos beside; packing.py packs documents with their own M-RoPE ids.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ocellus.data.image_tiling import qwen2vl_num_tokens
from ocellus.errors import CheckpointError, ConfigError, InputError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.models.connectors.merger import PatchMerger
from ocellus.models.families.common import check_spec, image_token_id
from ocellus.models.families.qwen2_vl.tower import MODEL_TYPE as TOWER_MODEL_TYPE
from ocellus.models.fusion import splice
from ocellus.models.generates import GeneratesWithDecoder
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig, Qwen2VisionTransformer, check_grids
from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.mrope import check_mm_token_type_ids, rope_index

ARCHS = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
MODEL_TYPES = tuple(ARCHS)
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


@dataclass(frozen=True)
class Qwen2VLTokens:
    image: int
    video: int | None = None
    vision_start: int | None = None
    vision_end: int | None = None


class MRopeKVCache(StaticKVCache):
    """The static cache plus each row's M-RoPE delta, set at prefill (beam search reorders both)."""
    rope_deltas: torch.Tensor | None = None   # [B, 1]

    def reorder(self, index: torch.Tensor) -> None:
        super().reorder(index)
        if self.rope_deltas is not None:
            self.rope_deltas = self.rope_deltas[index]


class Qwen2VL(GeneratesWithDecoder):
    def __init__(self, visual: Qwen2VisionTransformer, merger: PatchMerger, language_model: DecoderLM,
                 tokens: Qwen2VLTokens):
        super().__init__()
        self.visual = visual
        self.merger = merger
        self.attach_decoder(language_model)
        self.tokens = tokens
        self.hf_config: dict = {}

    @property
    def variant(self) -> str:
        return self.visual.config.variant

    def parts(self) -> dict[str, nn.Module]:
        return {"vision": self.visual, "connector": self.merger, "llm": self.language_model}

    # -- generation-engine interface ---------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> MRopeKVCache:
        c, p = self.language_model.config, self.language_model.embed_tokens.weight
        return MRopeKVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_len, c.head_dim,
                            dtype=p.dtype, device=p.device)

    def check_generate(self, input_ids, **kwargs) -> None:
        if (kwargs.get("num_beams") or 1) > 1:
            # beam search repeats every prefill tensor row-wise; Qwen2-VL's patches are not per-row
            raise ConfigError("beam search is not implemented for Qwen2-VL (its packed patches cannot be "
                              "repeated per beam row); use greedy or sampled decoding")

    # -- vision --------------------------------------------------------------------------------------
    def media_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Patches + grids -> (merged features [sum T_i, D], T_i per image/video)."""
        m = self.visual.config.spatial_merge_size
        dtype = self.visual.patch_embed.proj.weight.dtype
        feats = self.merger(self.visual(pixel_values.to(dtype), grid_thw))              # [sum P/m^2, D]
        return feats, [qwen2vl_num_tokens(g, merge_size=m) for g in check_grids(grid_thw, m)]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None, pixel_values_videos: torch.Tensor | None = None,
                video_grid_thw: torch.Tensor | None = None, second_per_grid_ts: torch.Tensor | None = None,
                mm_token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                cache: MRopeKVCache | None = None, logits_to_keep: int = 0,
                inputs_embeds: torch.Tensor | None = None, document_ids: torch.Tensor | None = None):
        """position_ids: [3, B, T] M-RoPE ids are used as given (packing passes them). Otherwise they are
        computed from input_ids + grids (+ attention_mask); a [B, T] position_ids is then only accepted
        as the plain text positions (what a generation engine passes), and at a decode step it is
        shifted by the rope delta kept on the cache."""
        prefill = cache is None or cache.length == 0
        if inputs_embeds is None:
            if input_ids is None:
                raise InputError("pass input_ids (with image/video pad tokens) or inputs_embeds")
            inputs_embeds = self.language_model._embed(input_ids, None)                  # [B, T, D], ids checked
            for kind, pixels, grids, token in (("image", pixel_values, image_grid_thw, self.tokens.image),
                                               ("video", pixel_values_videos, video_grid_thw, self.tokens.video)):
                if pixels is not None:
                    if grids is None:
                        raise InputError(f"{kind} pixels were given without {kind}_grid_thw")
                    feats, counts = self.media_features(pixels, grids)
                    inputs_embeds = splice(inputs_embeds, input_ids, token, feats, tokens_per_image=counts)
                elif prefill and token is not None and bool((input_ids == token).any()):
                    raise InputError(f"input_ids hold {kind} pad tokens (id {token}) but no {kind} pixels were given")
            if mm_token_type_ids is not None:
                check_mm_token_type_ids(mm_token_type_ids, input_ids, self.tokens.image, self.tokens.video)
        position_ids = self._positions(input_ids, inputs_embeds, attention_mask, position_ids, image_grid_thw,
                                       video_grid_thw, second_per_grid_ts, cache, prefill)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, labels=labels, cache=cache,
                                   logits_to_keep=logits_to_keep, document_ids=document_ids)

    def _positions(self, input_ids, embeds, attention_mask, position_ids, image_grid_thw, video_grid_thw,
                   second_per_grid_ts, cache, prefill) -> torch.Tensor:
        if position_ids is not None and position_ids.dim() == 3:
            return position_ids                                                        # [3, B, T] given
        B, T = embeds.shape[:2]
        if not prefill:  # decode: plain positions + each row's delta, the same id on all three axes
            if position_ids is None:
                position_ids = torch.arange(cache.length, cache.length + T, device=embeds.device).expand(B, T)
            deltas = cache.rope_deltas if cache.rope_deltas is not None else 0
            return (position_ids + deltas).expand(3, B, T)
        if input_ids is None:  # embeddings only: nothing tells where media are; text positions
            plain = torch.arange(T, device=embeds.device).expand(B, T)
            return (position_ids if position_ids is not None else plain).expand(3, B, T)
        vc = self.visual.config
        mrope, deltas = rope_index(input_ids, image_token_id=self.tokens.image, video_token_id=self.tokens.video,
                                   image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                                   merge_size=vc.spatial_merge_size, attention_mask=attention_mask,
                                   second_per_grid_ts=second_per_grid_ts, tokens_per_second=vc.tokens_per_second)
        if position_ids is not None:
            real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            plain = real.long().cumsum(-1) - 1
            if position_ids.shape != input_ids.shape or not torch.equal(position_ids[real], plain[real]):
                raise InputError("Qwen2-VL computes its M-RoPE positions from input_ids and the grids: a [B, T] "
                                 "position_ids may only hold the plain text positions (cumsum of the mask - 1); "
                                 "pass [3, B, T] M-RoPE ids for anything else (e.g. packing)")
        if cache is not None:
            cache.rope_deltas = deltas
        return mrope


# ---- build from config.json ---------------------------------------------------------------------------
def _variant(cfg: dict) -> str:
    model_type = cfg.get("model_type")
    if model_type not in ARCHS:
        archs = cfg.get("architectures") or []
        model_type = next((t for t, a in ARCHS.items() if a in archs), None)
    if model_type is None:
        raise ConfigError(f"not a Qwen2-VL / Qwen2.5-VL config (model_type {cfg.get('model_type')!r})")
    return model_type


def _text_config(cfg: dict, variant: str) -> dict:
    """text_config (transformers 5), or the top-level text fields of 4.x hub configs."""
    text = dict(cfg.get("text_config") or {k: v for k, v in cfg.items() if k != "vision_config"})
    text["model_type"] = f"{variant}_text"
    text.pop("architectures", None)
    if "tie_word_embeddings" in cfg:  # transformers keeps it at the top level
        text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
    if not (text.get("rope_parameters") or text.get("rope_scaling") or {}).get("mrope_section"):
        text["rope_parameters"] = {**(text.get("rope_parameters") or {"rope_type": "default"}),
                                   "mrope_section": [16, 24, 24]}  # transformers' default
    return text


# transformers' Qwen2VLConfig / Qwen2_5_VLConfig defaults (Qwen's tokenizer ids) for a config.json that leaves
# them out (hand-written ones); a key written as null stays None (our recipes' models without video)
TOKEN_DEFAULTS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                  "vision_end_token_id": 151653}


def token_ids(cfg: dict) -> Qwen2VLTokens:
    """config.json's placeholder ids, transformers' defaults where a key is missing."""
    ids = {key: cfg.get(key, default) for key, default in TOKEN_DEFAULTS.items()}
    if ids["image_token_id"] is None:
        raise ConfigError("Qwen2-VL config.json has image_token_id null (the id images are spliced at)")
    for key, value in ids.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"Qwen2-VL config.json's {key} must be a non-negative integer, got {value!r}")
    return Qwen2VLTokens(image=ids["image_token_id"], video=ids["video_token_id"],
                         vision_start=ids["vision_start_token_id"], vision_end=ids["vision_end_token_id"])


def build_qwen2_vl(cfg: dict) -> Qwen2VL:
    variant = _variant(cfg)
    vision = Qwen2VisionConfig.from_hf(cfg.get("vision_config") or {}, variant)
    decoder = DecoderLM(DecoderConfig.from_hf(_text_config(cfg, variant)))
    if vision.out_hidden_size != decoder.config.hidden_size:
        raise ConfigError(f"vision_config's merger output ({vision.out_hidden_size}) differs from the decoder's "
                          f"hidden_size ({decoder.config.hidden_size})")
    tokens = token_ids(cfg)
    merger = PatchMerger(vision.hidden_size, vision.out_hidden_size, vision.spatial_merge_size,
                         norm="layernorm" if variant == "qwen2_vl" else "rmsnorm")
    if variant == "qwen2_5_vl" and vision.tokens_per_second is None:
        raise ConfigError("Qwen2.5-VL vision_config needs tokens_per_second")
    model = Qwen2VL(Qwen2VisionTransformer(vision), merger, decoder, tokens)
    model.hf_config = dict(cfg)
    return model


# ---- the recipe side (model.architecture: qwen2_vl or qwen2_5_vl) -----------------------------------------
SPEC_KEYS = frozenset({"architecture", "llm_from", "vision_from", "config", "image_token", "video_token", "init_from"})
# a recipe's vision_config: config.json's names for each variant (the merger's output width is the decoder's,
# set by compose: hidden_size for Qwen2-VL, out_hidden_size for Qwen2.5-VL), and the defaults of a small tower
VISION_DEFAULTS = {
    "qwen2_vl": {"depth": 4, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 2, "patch_size": 8, "spatial_merge_size": 2,
                 "temporal_patch_size": 2},
    "qwen2_5_vl": {"depth": 4, "hidden_size": 64, "num_heads": 4, "intermediate_size": 128, "patch_size": 8,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2},
}
VISION_KEYS = {"qwen2_vl": {*VISION_DEFAULTS["qwen2_vl"], "hidden_act", "in_channels"},
               "qwen2_5_vl": {*VISION_DEFAULTS["qwen2_5_vl"], "hidden_act", "in_channels", "window_size",
                              "fullatt_block_indexes"}}
OUT_WIDTH = {"qwen2_vl": "hidden_size", "qwen2_5_vl": "out_hidden_size"}


def compose(spec: dict, tok) -> Qwen2VL:
    """A recipe's Qwen2-VL or Qwen2.5-VL (spec["architecture"], default qwen2_vl): the pretrained decoder of
    spec["llm_from"] + a NEW ViT and merger of that variant, trained from scratch. spec["config"] is a partial
    config.json: its vision_config (VISION_KEYS: Qwen2-VL's depth, embed_dim, num_heads, mlp_ratio, patch_size,
    spatial_merge_size, ...; Qwen2.5-VL's hidden_size, intermediate_size, window_size (default 2x2 merged
    tokens), fullatt_block_indexes (default the last block), tokens_per_second, ...) and mrope_section (default
    about a third of the rotary pairs per axis; text has the same id on all axes, so the decoder's text
    positions are unchanged). spec["vision_from"]: a pretrained tower of this variant instead of a new one (an
    ocellus_qwen2_vit export: recipes/qwen2_vl_tiny_shapes/vit.yaml's scene ViT); a vision_config the recipe
    also gives must describe that tower (ConfigError naming what differs), and the merger stays new. A CLIP
    tower is refused: it has learned absolute positions for one image size, not Qwen2-VL's 2D RoPE."""
    variant = spec.get("architecture", "qwen2_vl")
    if variant not in ARCHS:
        raise ConfigError(f"the qwen2_vl family composes {sorted(ARCHS)}, not {variant!r}")
    check_spec(spec, SPEC_KEYS, variant)
    if not spec.get("llm_from"):
        raise ConfigError(f"a {variant} recipe model needs llm_from (a pretrained decoder directory)")
    extra = dict(spec.get("config") or {})
    unknown = set(extra) - {"vision_config", "mrope_section"}
    if unknown:
        raise ConfigError(f"model.config for {variant} takes vision_config and mrope_section, not {sorted(unknown)}")
    given = dict(extra.get("vision_config") or {})
    if set(given) - VISION_KEYS[variant]:
        raise ConfigError(f"model.config.vision_config for {variant}: unknown keys "
                          f"{sorted(set(given) - VISION_KEYS[variant])}; known: {sorted(VISION_KEYS[variant])}")
    text = read_config(Path(spec["llm_from"]))
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if text.get("head_dim") not in (None, head_dim):
        raise ConfigError("transformers' Qwen2-VL decoder derives head_dim = hidden_size / heads; the llm_from "
                          f"checkpoint has head_dim={text['head_dim']}")
    third = head_dim // 2 // 3
    section = extra.get("mrope_section") or [head_dim // 2 - 2 * third, third, third]
    rope = text.get("rope_parameters") or {"rope_type": "default", "rope_theta": text.get("rope_theta", 1e4)}
    text = {**text, "rope_parameters": {**rope, "mrope_section": list(section)}}
    vision = {**VISION_DEFAULTS[variant], **given, OUT_WIDTH[variant]: text["hidden_size"]}
    if variant == "qwen2_5_vl":
        vision.setdefault("window_size", 2 * vision["patch_size"] * vision["spatial_merge_size"])
        vision.setdefault("fullatt_block_indexes", [vision["depth"] - 1])
    tower = None
    if spec.get("vision_from"):
        tower = _pretrained_tower(spec["vision_from"], variant)
        if given:
            _check_same_tower(Qwen2VisionConfig.from_hf(vision, variant), tower.config, spec["vision_from"])
        vision = {**tower.config.to_hf(), OUT_WIDTH[variant]: text["hidden_size"]}
    cfg = {"architectures": [ARCHS[variant]], "model_type": variant, "text_config": text,
           "vision_config": vision, "image_token_id": image_token_id(tok, spec),
           # no video / vision start-end tokens unless the recipe names them: written null, not transformers' ids
           "video_token_id": None, "vision_start_token_id": None, "vision_end_token_id": None,
           **_video_token_id(tok, spec),
           "tie_word_embeddings": bool(text.get("tie_word_embeddings", False))}
    model = build_qwen2_vl(cfg)
    model.family_name = "qwen2_vl"   # the hub family (and registry module) of both variants
    _load_decoder(model.language_model, load_model(spec["llm_from"]).state_dict(), spec["llm_from"])
    if tower is not None:
        model.visual.load_state_dict(tower.state_dict())
    return model


def _pretrained_tower(source, variant: str) -> Qwen2VisionTransformer:
    """spec["vision_from"]: a Qwen2-VL tower of the recipe's variant saved alone (ocellus_qwen2_vit)."""
    cfg = read_config(Path(source))
    if cfg.get("model_type") != TOWER_MODEL_TYPE:
        raise ConfigError(f"{variant} vision_from {source}: config.json model_type {cfg.get('model_type')!r} is not a "
                          f"Qwen2-VL vision tower ({TOWER_MODEL_TYPE!r}, what task vit_classify exports for a "
                          f"qwen2_vl_vision / qwen2_5_vl_vision config); a CLIP tower's absolute positions do not "
                          f"fit Qwen2-VL's 2D RoPE")
    if cfg.get("variant") != variant:
        raise ConfigError(f"{variant} vision_from {source} is a {cfg.get('variant')} tower, not a {variant} one")
    return load_model(source)


def _check_same_tower(recipe: Qwen2VisionConfig, pretrained: Qwen2VisionConfig, source) -> None:
    """The recipe's vision_config and the vision_from tower's agree on everything but the merger's output
    width (the decoder's, set by compose)."""
    skip = {"out_hidden_size", "hf"}
    differ = [f"{f.name}: recipe {getattr(recipe, f.name)!r}, tower {getattr(pretrained, f.name)!r}"
              for f in fields(Qwen2VisionConfig) if f.name not in skip
              and getattr(recipe, f.name) != getattr(pretrained, f.name)]
    if differ:
        raise ConfigError(f"model.config.vision_config does not describe the vision_from tower {source}: "
                          + "; ".join(differ) + " (drop vision_config to take the tower's)")


def _video_token_id(tok, spec: dict) -> dict:
    """config.json's video_token_id: model.video_token, else <|video_pad|> when the tokenizer has it; none (a
    model without video) otherwise. The tiny BPE has no <|video_pad|>: a video recipe names one of its special
    tokens that its data never writes (recipes/qwen2_vl_tiny_shapes/video.yaml)."""
    name = spec.get("video_token") or (VIDEO_PAD if tok.convert_tokens_to_ids(VIDEO_PAD) is not None else None)
    if name is None:
        return {}
    index = tok.convert_tokens_to_ids(name)
    if index is None:
        raise ConfigError(f"model.video_token {name!r} is not a token of the tokenizer")
    if index == image_token_id(tok, spec):
        raise ConfigError(f"model.video_token {name!r} is the image token; a video needs its own placeholder")
    return {"video_token_id": index}


def _load_decoder(decoder: DecoderLM, state: dict, source) -> None:
    """Qwen2-VL's decoder always has q/k/v biases; a Llama decoder (none) becomes one with zero biases,
    the same function. Anything else missing or unexpected is an error."""
    import re
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    biases = [k for k in missing if re.fullmatch(r"layers\.\d+\.self_attn\.[qkv]_proj\.bias", k)]
    if unexpected or set(missing) - set(biases):
        raise CheckpointError(f"{source}: decoder does not fit Qwen2-VL's: missing {sorted(set(missing) - set(biases))}, "
                              f"unexpected {sorted(unexpected)}")
    with torch.no_grad():
        for k in biases:
            decoder.get_parameter(k).zero_()
