"""Which config.json `architectures` Ocellus can build, and each family's key table.

A family = a builder (config.json dict -> nn.Module), the key table for its checkpoint names,
and a function giving back the config.json to save. The table below names, for each architecture, the
module and function that make its `Family`; a module is imported the first time one of its architectures
is looked up, so loading a Llama imports no vision, contrastive or VLM code. hub imports no model class:
the family modules (models/, models/families/) import hub, never the other way (docs/ARCHITECTURE.md,
Layers). New families register here with one line.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ocellus.errors import ConfigError
from ocellus.hub.bert_families import PREFIXES as _BERT_ARCHITECTURES
from ocellus.hub.keymap import KeyMap


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


@dataclass(frozen=True)
class FamilyRef:
    """Where an architecture's Family is made: `module.function(*args)` (a dict result is indexed by `key`).
    Resolved on first use and cached, so architectures sharing a ref share one Family."""
    module: str
    function: str = "family"
    args: tuple = ()
    key: str | None = None

    def load(self) -> Family:
        if self not in _LOADED:
            made = getattr(importlib.import_module(self.module), self.function)(*self.args)
            _LOADED[self] = made[self.key] if self.key is not None else made
        return _LOADED[self]


_LOADED: dict[FamilyRef, Family] = {}


def resolve_family(entry: Family | FamilyRef) -> Family:
    """A table value -> its Family (a FamilyRef is imported and built on first use)."""
    return entry.load() if isinstance(entry, FamilyRef) else entry


_M, _F = "ocellus.models.", "ocellus.models.families."
_DECODER = FamilyRef(_M + "text.decoder")
_INTERNVL, _QWEN2_VL, _BLIP2 = FamilyRef(_F + "internvl"), FamilyRef(_F + "qwen2_vl"), FamilyRef(_F + "blip2")

# architecture -> its Family or where it is made; the order decides family_for_model's class match
ARCHITECTURES: dict[str, Family | FamilyRef] = {
    "LlamaForCausalLM": _DECODER,
    "Qwen2ForCausalLM": _DECODER,
}
VISION_ARCHITECTURES = ("CLIPVisionModel", "SiglipVisionModel")   # one ViT family (hub/vision_families.py keys)
for _arch in VISION_ARCHITECTURES:
    ARCHITECTURES[_arch] = FamilyRef(_M + "vision.vit")
ARCHITECTURES["LlavaForConditionalGeneration"] = FamilyRef(_F + "llava")
ARCHITECTURES["LlavaNextForConditionalGeneration"] = FamilyRef(_F + "llava_next")
for _arch in ("CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection"):   # dual encoders + text towers
    ARCHITECTURES[_arch] = FamilyRef(_M + "contrastive.clip", "families", key=_arch)
for _arch in ("SiglipModel", "SiglipTextModel"):
    ARCHITECTURES[_arch] = FamilyRef(_M + "contrastive.siglip", "families", key=_arch)
ARCHITECTURES["InternVLForConditionalGeneration"] = ARCHITECTURES["OcellusInternVLForConditionalGeneration"] = _INTERNVL
ARCHITECTURES["OcellusQwenVLForConditionalGeneration"] = FamilyRef(_F + "qwen_vl")
ARCHITECTURES["OcellusFlamingoForConditionalGeneration"] = FamilyRef(_F + "flamingo")
ARCHITECTURES["Qwen2VLForConditionalGeneration"] = ARCHITECTURES["Qwen2_5_VLForConditionalGeneration"] = _QWEN2_VL
for _arch in _BERT_ARCHITECTURES:   # BertModel, BertForMaskedLM, BertForPreTraining (hub/bert_families.py keys)
    ARCHITECTURES[_arch] = FamilyRef(_M + "text.bert", args=(_arch,))
ARCHITECTURES["Blip2ForConditionalGeneration"] = ARCHITECTURES["OcellusBlip2ForConditionalGeneration"] = _BLIP2
ARCHITECTURES["OcellusBlip2QFormerPretraining"] = FamilyRef("ocellus.train.qformer_objectives")   # BLIP-2 stage 1
ARCHITECTURES["OcellusALBEF"] = FamilyRef(_M + "contrastive.albef")
ARCHITECTURES["OcellusBLIP"] = FamilyRef(_M + "contrastive.blip")


# config.json `model_type`s the families above build (a config without one is read by architectures alone);
# each family module's MODEL_TYPES / MODEL_TYPE must be in here (tests/unit/test_import_layers.py checks)
MODEL_TYPES = frozenset({
    "llama", "qwen2", "bert", "clip", "siglip", "clip_vision_model", "siglip_vision_model", "clip_text_model",
    "siglip_text_model", "ocellus_albef", "ocellus_blip", "ocellus_blip2_stage1",
    "llava", "llava_next", "blip-2", "ocellus_blip2", "ocellus_flamingo", "internvl", "ocellus_internvl",
    "ocellus_qwen_vl", "qwen2_vl", "qwen2_5_vl"})
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
            return resolve_family(ARCHITECTURES[a])
    raise ConfigError(f"{where}: unknown architecture {archs or '(none given)'}; "
                      f"supported: {sorted(ARCHITECTURES)}")


def family_for_model(model: nn.Module) -> Family:
    """The family that built the model (`family_name`, set by load), else the first whose class fits
    (families are imported in table order until one matches)."""
    named = getattr(model, "family_name", None)
    for fam in map(resolve_family, ARCHITECTURES.values()):
        if fam.name == named or (named is None and type(model) is fam.model_class):
            return fam
    raise ConfigError(f"no checkpoint family knows how to save a {type(model).__name__}")
