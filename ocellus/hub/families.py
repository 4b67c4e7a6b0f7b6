"""Which config.json `architectures` Ocellus can build, and each family's key table.

A family = a builder (config.json dict -> nn.Module), the key table for its checkpoint names,
and a function giving back the config.json to save. New families register here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ocellus.errors import ConfigError
from ocellus.hub.keymap import KeyMap
from ocellus.models.text.decoder import DecoderConfig, DecoderLM


@dataclass(frozen=True)
class Family:
    name: str
    model_class: type
    build: Callable[[dict], nn.Module]
    keymap: KeyMap
    hf_config: Callable[[nn.Module], dict]   # the config.json that describes a built model
    tied: Callable[[nn.Module], tuple[str, ...]] = lambda m: ()  # our keys that share another's tensor
    # checkpoint tensors -> tensors the key table maps one to one (fused tensors split, shapes changed), and
    # back on save; None where names alone differ (e.g. BLIP-2's ViT fuses q/k/v into one `qkv`)
    from_checkpoint: Callable[[dict], dict] | None = None
    to_checkpoint: Callable[[dict], dict] | None = None


DECODER_KEYS = KeyMap(
    rules=(
        ("embed_tokens.weight", "model.embed_tokens.weight"),
        ("layers.{i}.{rest}", "model.layers.{i}.{rest}"),
        ("norm.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
    ),
    drop=(r"rotary_emb\.inv_freq$",),
)

DECODER = Family(
    name="decoder", model_class=DecoderLM,
    build=lambda cfg: DecoderLM(DecoderConfig.from_hf(cfg)),
    keymap=DECODER_KEYS,
    hf_config=lambda m: m.config.to_hf(),
    tied=lambda m: ("lm_head.weight",) if m.config.tie_word_embeddings else (),
)

from ocellus.hub.vision_families import register as _register_vision  # noqa: E402  (imports Family lazily)


def _llava() -> Family:
    from ocellus.models.families.llava import LLAVA_KEYS, build_llava, llava_hf_config
    from ocellus.models.vlm import VLM
    return Family(name="llava", model_class=VLM, build=build_llava, keymap=LLAVA_KEYS, hf_config=llava_hf_config,
                  tied=lambda m: ("language_model.lm_head.weight",)
                  if m.language_model.config.tie_word_embeddings else ())


def _llava_next() -> Family:
    from ocellus.models.families.llava_next import LLAVA_NEXT_KEYS, build_llava_next, llava_next_hf_config
    from ocellus.models.vlm import VLM
    return Family(name="llava_next", model_class=VLM, build=build_llava_next, keymap=LLAVA_NEXT_KEYS,
                  hf_config=llava_next_hf_config,
                  tied=lambda m: ("language_model.lm_head.weight",)
                  if m.language_model.config.tie_word_embeddings else ())


def _flamingo() -> Family:
    from ocellus.models.families.flamingo import (FLAMINGO_KEYS, Flamingo, build_flamingo, flamingo_hf_config,
                                                  flamingo_tied)
    return Family(name="flamingo", model_class=Flamingo, build=build_flamingo, keymap=FLAMINGO_KEYS,
                  hf_config=flamingo_hf_config, tied=flamingo_tied)


ARCHITECTURES: dict[str, Family] = {
    "LlamaForCausalLM": DECODER,
    "Qwen2ForCausalLM": DECODER,
}
_register_vision(ARCHITECTURES)
ARCHITECTURES["LlavaForConditionalGeneration"] = _llava()
ARCHITECTURES["LlavaNextForConditionalGeneration"] = _llava_next()
from ocellus.models.contrastive import clip as _clip, siglip as _siglip  # noqa: E402  (dual encoders)
ARCHITECTURES.update(_clip.families(), **_siglip.families())   # CLIPModel/SiglipModel (+ text towers)
from ocellus.models.families.internvl import family as _internvl  # noqa: E402  (InternViT or CLIP tower)
ARCHITECTURES["InternVLForConditionalGeneration"] = ARCHITECTURES["OcellusInternVLForConditionalGeneration"] = _internvl()
from ocellus.models.families.qwen_vl import family as _qwen_vl  # noqa: E402
ARCHITECTURES["OcellusQwenVLForConditionalGeneration"] = _qwen_vl()
ARCHITECTURES["OcellusFlamingoForConditionalGeneration"] = _flamingo()
from ocellus.models.families.qwen2_vl import family as _qwen2_vl  # noqa: E402  (Qwen2-VL and Qwen2.5-VL)
ARCHITECTURES["Qwen2VLForConditionalGeneration"] = ARCHITECTURES["Qwen2_5_VLForConditionalGeneration"] = _qwen2_vl()
from ocellus.hub.bert_families import register as _register_bert  # noqa: E402
_register_bert(ARCHITECTURES)
from ocellus.models.families.blip2 import family as _blip2  # noqa: E402  (BLIP-2, MiniGPT-4)
ARCHITECTURES["Blip2ForConditionalGeneration"] = ARCHITECTURES["OcellusBlip2ForConditionalGeneration"] = _blip2()
from ocellus.train.qformer_objectives import family as _blip2_stage1  # noqa: E402  (BLIP-2 stage 1)
ARCHITECTURES["OcellusBlip2QFormerPretraining"] = _blip2_stage1()
from ocellus.models.contrastive import albef as _albef, blip as _blip  # noqa: E402  (ALBEF, BLIP pretraining)
ARCHITECTURES["OcellusALBEF"], ARCHITECTURES["OcellusBLIP"] = _albef.family(), _blip.family()


# config.json `model_type`s the families above build (a config without one is read by architectures alone)
from ocellus.models.families import (blip2 as _b2, flamingo as _fl, internvl as _ivl, llava as _lv,  # noqa: E402
                                     llava_next as _lvn, qwen2_vl as _q2, qwen_vl as _qv)
from ocellus.train.qformer_objectives import MODEL_TYPE as _STAGE1_TYPE  # noqa: E402
MODEL_TYPES = frozenset({
    "llama", "qwen2", "bert", "clip", "siglip", "clip_vision_model", "siglip_vision_model", "clip_text_model",
    "siglip_text_model", "ocellus_albef", "ocellus_blip", _STAGE1_TYPE,
    *_lv.MODEL_TYPES, *_lvn.MODEL_TYPES, *_b2.MODEL_TYPES, *_fl.MODEL_TYPES, *_ivl.MODEL_TYPES, *_qv.MODEL_TYPES,
    *_q2.MODEL_TYPES})
# Ocellus checkpoints that other loaders open
OTHER_LOADERS = {"ocellus_image_generator": "ocellus generate-image (models/generative/checkpoint.load_generator)",
                 "ocellus_unified": "ocellus chat (train/unified.load_unified)"}


def check_model_type(cfg: dict, where: str = "config.json") -> None:
    """An unknown top-level model_type is a ConfigError naming it and the known ones."""
    kind = cfg.get("model_type")
    if kind in OTHER_LOADERS:
        raise ConfigError(f"{where}: model_type {kind!r} is not a model ocellus.load builds; open it with "
                          f"{OTHER_LOADERS[kind]}")
    if kind is not None and kind not in MODEL_TYPES:
        raise ConfigError(f"{where}: unknown model_type {kind!r}; known: {sorted(MODEL_TYPES)}")


def family_for_config(cfg: dict, where: str = "config.json") -> Family:
    check_model_type(cfg, where)
    archs = cfg.get("architectures") or []
    for a in archs:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    raise ConfigError(f"{where}: unknown architecture {archs or '(none given)'}; "
                      f"supported: {sorted(ARCHITECTURES)}")


def family_for_model(model: nn.Module) -> Family:
    """The family that built the model (`family_name`, set by load), else the first whose class fits."""
    named = getattr(model, "family_name", None)
    for fam in ARCHITECTURES.values():
        if fam.name == named or (named is None and type(model) is fam.model_class):
            return fam
    raise ConfigError(f"no checkpoint family knows how to save a {type(model).__name__}")
