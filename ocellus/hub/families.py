"""The family registry: one table of every model family Ocellus loads, saves, composes or serves.

A family record names, by module path, where each of its pieces lives; a module is imported the first time
that piece is needed, so loading a Llama imports the decoder and no vision, VLM, contrastive, training or
serving code. The pieces (docs/ADDING_A_MODEL.md):
  checkpoint  family(architecture) -> Family: the builder (config.json dict -> nn.Module), the key table (our
              names <-> the checkpoint's) and the HF-config mapping (model -> config.json)
  modeling    compose(spec, tok) -> nn.Module: the model of a recipe that names the family (model.architecture)
  processor   processor_from_dir(dir) (ocellus.load_processor) and training_processor(model, tok, image_config)
  export      export_processor(model, tok, image_config, dir): what an export writes beside the weights
  packing     collate_packed(rows, samples, width, model, pad): data.pack for a family with its own positions
ocellus.load / ocellus.save (hub/checkpoint.py) find a family by config.json's `architectures` (Ocellus' own
formats, which name none, by `model_type`; a hand-written HF config that names none builds its model_type's
class, as transformers' Auto classes do: `with_architectures`); ocellus.load_processor by model_type; recipes by
name. hub imports
no model class: family modules import hub, never the other way (docs/ARCHITECTURE.md, Layers).
A family is a folder (models/families/<name>/) plus one `register(FamilyRecord(...))` line below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from torch import nn

from ocellus.errors import ConfigError
from ocellus.hub.keymap import KeyMap


@dataclass(frozen=True)
class Family:
    """How one checkpoint layout becomes a model and back (what a record's checkpoint module makes)."""
    name: str
    model_class: type | tuple[type, ...]   # the class(es) it builds: ocellus.save finds the family by it
    build: Callable[[dict], nn.Module]
    keymap: KeyMap
    hf_config: Callable[[nn.Module], dict]   # the config.json that describes a built model
    tied: Callable[[nn.Module], tuple[str, ...]] = lambda m: ()  # our keys that share another's tensor
    # checkpoint tensors -> tensors the key table maps one to one (fused tensors split, shapes changed), and
    # back on save; None where names alone differ (e.g. BLIP-2's ViT fuses q/k/v into one `qkv`)
    from_checkpoint: Callable[[dict], dict] | None = None
    to_checkpoint: Callable[[dict], dict] | None = None
    # config.json -> regexes of checkpoint keys the built model has no place for by design, skipped on load
    # (DeepSeek-V3's multi-token-prediction layers); any other key the table cannot map stays an error
    checkpoint_only: Callable[[dict], tuple[str, ...]] = lambda cfg: ()
    # config.json records the weights' dtype (transformers' configs do; Ocellus' own build-spec formats,
    # read back key by key, do not)
    config_dtype: bool = True

    def builds(self, model: nn.Module) -> bool:
        classes = self.model_class if isinstance(self.model_class, tuple) else (self.model_class,)
        return type(model) in classes


# the key table of an Ocellus format whose checkpoint names are the model's own (generators, unified models)
OWN_NAMES = KeyMap(rules=(("{rest}", "{rest}"),))


@dataclass(frozen=True)
class FamilyRecord:
    """One family: its names and the module of each piece (dotted paths, imported on first use; None where the
    family has no such piece). See the module docstring for what each piece module defines."""
    name: str                              # a recipe's model.architecture when the family composes one
    model_types: tuple[str, ...]           # config.json model_type values it reads
    architectures: tuple[str, ...] = ()    # config.json architectures it builds (none: found by model_type);
    #                                        model_types[i] is built as architectures[i] when a config names none
    checkpoint: str | None = None
    modeling: str | None = None
    processor: str | None = None
    export: str | None = None
    packing: str | None = None
    aliases: tuple[str, ...] = ()          # other recipe names its compose serves (it reads spec["architecture"])

    @property
    def recipe_names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases) if self.modeling else ()


@dataclass(frozen=True)
class FamilyRef:
    """Where an architecture's Family is made: `module.family(architecture)`, imported and built on first use
    and cached."""
    module: str
    architecture: str | None = None

    def load(self) -> Family:
        if self not in _LOADED:
            made = import_piece(self.module, "checkpoint").family(self.architecture)
            if not isinstance(made, Family):
                raise ConfigError(f"{self.module}.family({self.architecture!r}) returned {type(made).__name__}, "
                                  f"not a Family")
            _LOADED[self] = made
        return _LOADED[self]


_LOADED: dict[FamilyRef, Family] = {}
FAMILIES: dict[str, FamilyRecord] = {}                  # name -> record, in registration order
# indexes of FAMILIES, kept by register / unregister
ARCHITECTURES: dict[str, Family | FamilyRef] = {}       # config.json architecture -> where its Family is made
MODEL_TYPES: set[str] = set()                           # every known config.json model_type
VLM_FAMILIES: dict[str, FamilyRecord] = {}              # recipe name (model.architecture) -> record
_BY_MODEL_TYPE: dict[str, FamilyRecord] = {}


def import_piece(module: str, piece: str) -> ModuleType:
    """A record's module, imported; a registry line naming a module that does not exist is a ConfigError."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            raise ConfigError(f"the family registry names {module} as a {piece} module, and it does not "
                              f"exist") from None
        raise


def _names(record: FamilyRecord, field: str) -> tuple[str, ...]:
    value = getattr(record, field)
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"family {record.name!r}: {field} must be a tuple of non-empty strings, got {value!r}")
    return value


def register(record: FamilyRecord) -> FamilyRecord:
    """Add a family to the table. Its architectures, model_types and recipe names must be new: a name another
    family claims is a ConfigError naming both. Nothing is imported here."""
    if not isinstance(record, FamilyRecord) or not isinstance(record.name, str) or not record.name:
        raise ConfigError(f"register takes a FamilyRecord with a name, got {record!r}")
    if record.name in FAMILIES:
        raise ConfigError(f"family {record.name!r} is registered already")
    if not _names(record, "model_types"):
        raise ConfigError(f"family {record.name!r}: model_types must name at least one config.json model_type")
    for field in ("checkpoint", "modeling", "processor", "export", "packing"):
        value = getattr(record, field)
        if value is not None and not (isinstance(value, str) and value):
            raise ConfigError(f"family {record.name!r}: {field} must be a dotted module path, got {value!r}")
    claims = [("architecture", a, ARCHITECTURES) for a in _names(record, "architectures")]
    claims += [("model_type", t, _BY_MODEL_TYPE) for t in record.model_types]
    claims += [("recipe name", n, VLM_FAMILIES) for n in (record.name, *_names(record, "aliases")) if record.modeling]
    for what, value, table in claims:
        if value in table:
            owner = next(r.name for r in FAMILIES.values()
                         if value in (*r.architectures, *r.model_types, *r.recipe_names))
            raise ConfigError(f"family {record.name!r}: {what} {value!r} belongs to family {owner!r}")
    if record.architectures and record.checkpoint is None:
        raise ConfigError(f"family {record.name!r} names architectures but no checkpoint module to build them")
    if record.architectures and len(record.architectures) < len(record.model_types):
        raise ConfigError(f"family {record.name!r}: each model_type needs its architecture (model_types[i] is built "
                          f"as architectures[i]); {len(record.model_types)} model_types, "
                          f"{len(record.architectures)} architectures")
    FAMILIES[record.name] = record
    for arch in record.architectures:
        ARCHITECTURES[arch] = FamilyRef(record.checkpoint, arch)
    for t in record.model_types:
        _BY_MODEL_TYPE[t] = record
        MODEL_TYPES.add(t)
    for n in record.recipe_names:
        VLM_FAMILIES[n] = record
    return record


def unregister(name: str) -> FamilyRecord:
    """Take a family out of the table (and its cached Families): the inverse of register."""
    if name not in FAMILIES:
        raise ConfigError(f"no family {name!r} is registered")
    record = FAMILIES.pop(name)
    for arch in record.architectures:
        ARCHITECTURES.pop(arch, None)
    for t in record.model_types:
        _BY_MODEL_TYPE.pop(t, None)
        MODEL_TYPES.discard(t)
    for n in record.recipe_names:
        VLM_FAMILIES.pop(n, None)
    for ref in [r for r in _LOADED if r.module == record.checkpoint]:
        del _LOADED[ref]
    return record


# ---- the table ---------------------------------------------------------------------------------------------
# Order matters where families build the same class (LLaVA, LLaVA-NeXT, InternVL and Qwen-VL share VLM; CLIP
# and SigLIP share DualEncoder): ocellus.save of a model no load named takes the first that builds its class.
_F = "ocellus.models.families."   # every family is a folder there
register(FamilyRecord("decoder", ("llama", "qwen2", "mistral", "qwen3"),
                      ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM"),
                      checkpoint=_F + "decoder.checkpoint"))
register(FamilyRecord("vit", ("clip_vision_model", "siglip_vision_model"), ("CLIPVisionModel", "SiglipVisionModel"),
                      checkpoint=_F + "vit.checkpoint"))
register(FamilyRecord("llava", ("llava",), ("LlavaForConditionalGeneration",), checkpoint=_F + "llava.checkpoint",
                      modeling=_F + "llava.modeling", processor=_F + "llava.processor"))
register(FamilyRecord("llava_next", ("llava_next",), ("LlavaNextForConditionalGeneration",),
                      checkpoint=_F + "llava_next.checkpoint", modeling=_F + "llava_next.modeling",
                      processor=_F + "llava.processor", export=_F + "llava_next.processor"))
register(FamilyRecord("llava_onevision", ("llava_onevision",), ("LlavaOnevisionForConditionalGeneration",),
                      checkpoint=_F + "llava_onevision.checkpoint", processor=_F + "llava_onevision.processor"))
register(FamilyRecord("blip2", ("blip-2", "ocellus_blip2"),
                      ("Blip2ForConditionalGeneration", "OcellusBlip2ForConditionalGeneration"),
                      checkpoint=_F + "blip2.checkpoint", modeling=_F + "blip2.modeling",
                      processor=_F + "blip2.processor"))
register(FamilyRecord("flamingo", ("ocellus_flamingo",), ("OcellusFlamingoForConditionalGeneration",),
                      checkpoint=_F + "flamingo.checkpoint", modeling=_F + "flamingo.modeling",
                      processor=_F + "flamingo.processor"))
register(FamilyRecord("qwen_vl", ("ocellus_qwen_vl",), ("OcellusQwenVLForConditionalGeneration",),
                      checkpoint=_F + "qwen_vl.checkpoint", modeling=_F + "qwen_vl.modeling",
                      processor=_F + "qwen_vl.processor"))
register(FamilyRecord("qwen2_vl", ("qwen2_vl", "qwen2_5_vl"),
                      ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
                      checkpoint=_F + "qwen2_vl.checkpoint", modeling=_F + "qwen2_vl.modeling",
                      processor=_F + "qwen2_vl.processor", export=_F + "qwen2_vl.processor",
                      packing=_F + "qwen2_vl.packing", aliases=("qwen2_5_vl",)))
register(FamilyRecord("internvl", ("internvl", "ocellus_internvl"),
                      ("InternVLForConditionalGeneration", "OcellusInternVLForConditionalGeneration"),
                      checkpoint=_F + "internvl.checkpoint", modeling=_F + "internvl.modeling",
                      processor=_F + "internvl.processor", export=_F + "internvl.processor"))
register(FamilyRecord("xgen_mm", ("ocellus_xgen_mm",), ("OcellusXGenMMForConditionalGeneration",),
                      checkpoint=_F + "xgen_mm.checkpoint", modeling=_F + "xgen_mm.modeling",
                      processor=_F + "xgen_mm.processor", export=_F + "llava_next.processor"))
register(FamilyRecord("clip", ("clip", "clip_text_model"),
                      ("CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection"), checkpoint=_F + "clip.checkpoint"))
register(FamilyRecord("siglip", ("siglip", "siglip_text_model"), ("SiglipModel", "SiglipTextModel"),
                      checkpoint=_F + "siglip.checkpoint"))
register(FamilyRecord("bert", ("bert",), ("BertModel", "BertForMaskedLM", "BertForPreTraining"),
                      checkpoint=_F + "bert.checkpoint"))
register(FamilyRecord("deepseek", ("deepseek_v2", "deepseek_v3"), ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"),
                      checkpoint=_F + "deepseek.checkpoint"))
register(FamilyRecord("blip2_stage1", ("ocellus_blip2_stage1",), ("OcellusBlip2QFormerPretraining",),
                      checkpoint=_F + "blip2.stage1"))
register(FamilyRecord("albef", ("ocellus_albef",), ("OcellusALBEF",), checkpoint=_F + "albef.checkpoint"))
register(FamilyRecord("blip", ("ocellus_blip",), ("OcellusBLIP",), checkpoint=_F + "blip.checkpoint"))
# Ocellus' own formats: config.json is a build spec with a model_type and no architectures
register(FamilyRecord("image_generator", ("ocellus_image_generator",), checkpoint=_F + "image_generator.checkpoint"))
register(FamilyRecord("unified", ("ocellus_unified",), checkpoint=_F + "unified.checkpoint"))
register(FamilyRecord("qwen2_vit", ("ocellus_qwen2_vit",), checkpoint=_F + "qwen2_vl.tower"))


# ---- lookups -----------------------------------------------------------------------------------------------

def resolve_family(entry: Family | FamilyRef) -> Family:
    """A table value -> its Family (a FamilyRef is imported and built on first use)."""
    return entry.load() if isinstance(entry, FamilyRef) else entry


def record_for_model_type(model_type: str | None) -> FamilyRecord | None:
    return _BY_MODEL_TYPE.get(model_type) if model_type is not None else None


def check_model_type(cfg: dict, where: str = "config.json") -> None:
    """An unknown top-level model_type is a ConfigError naming it and the known ones."""
    kind = cfg.get("model_type")
    if kind is not None and kind not in MODEL_TYPES:
        raise ConfigError(f"{where}: unknown model_type {kind!r}; known: {sorted(MODEL_TYPES)}")


def with_architectures(cfg: dict) -> dict:
    """A config.json naming no `architectures` (a hand-written one; save_pretrained always writes them) whose
    model_type belongs to an HF family -> the same config naming that model_type's class (`FamilyRecord`:
    model_types[i] -> architectures[i]), the class transformers' Auto classes build for it. Any other config
    as it is."""
    record = record_for_model_type(cfg.get("model_type"))
    if cfg.get("architectures") or record is None or not record.architectures:
        return cfg
    return {**cfg, "architectures": [record.architectures[record.model_types.index(cfg["model_type"])]]}


def family_for_config(cfg: dict, where: str = "config.json") -> Family:
    """config.json -> the Family that builds it: by `architectures` (a config naming none: its model_type's
    class, `with_architectures`), or, for Ocellus' own formats, by the model_type of a family that has no
    architectures."""
    check_model_type(cfg, where)
    archs = with_architectures(cfg).get("architectures") or []
    record = record_for_model_type(cfg.get("model_type"))
    for a in archs:
        if a in ARCHITECTURES:
            if record is not None and a not in record.architectures:
                owner = next((r.name for r in FAMILIES.values() if a in r.architectures), "?")
                raise ConfigError(f"{where}: model_type {cfg['model_type']!r} belongs to family {record.name!r} but "
                                  f"architectures {archs} to family {owner!r}; the config contradicts itself")
            return resolve_family(ARCHITECTURES[a])
    if not archs and record is not None and not record.architectures and record.checkpoint is not None:
        return FamilyRef(record.checkpoint).load()
    raise ConfigError(f"{where}: unknown architecture {archs or '(none given)'}; "
                      f"supported: {sorted(ARCHITECTURES)}")


def _families_in_order(first: str | None = None):
    """Every Family, imported one record at a time: the record named `first` (a model's family_name is
    usually its record's name), then the table in order."""
    records = list(FAMILIES.values())
    if first in FAMILIES:
        records.insert(0, FAMILIES[first])
    for record in records:
        if record.checkpoint is None:
            continue
        for arch in record.architectures or (None,):
            yield resolve_family(ARCHITECTURES.get(arch, FamilyRef(record.checkpoint, arch)))


def family_for_model(model: nn.Module) -> Family:
    """The family that built the model (`family_name`, set by load), else the first that builds its class
    (families are imported in table order until one matches)."""
    named = getattr(model, "family_name", None)
    for fam in _families_in_order(named):
        if fam.name == named or (named is None and fam.builds(model)):
            return fam
    raise ConfigError(f"no checkpoint family knows how to save a {type(model).__name__}")


class FamilyParts:
    """A family's recipe / processor side as one object: each attribute comes from the record's module for that
    piece, imported on first use (compose: modeling; training_processor, processor_from_dir: processor;
    export_processor: export; collate_packed: packing). A piece the family lacks is an AttributeError, so
    `hasattr(parts, "export_processor")` asks whether it has one."""
    _PIECE = {"compose": "modeling", "training_processor": "processor", "processor_from_dir": "processor",
              "export_processor": "export", "collate_packed": "packing"}

    def __init__(self, record: FamilyRecord):
        self.record, self.name, self.MODEL_TYPES = record, record.name, record.model_types

    def __getattr__(self, attr: str):
        piece = type(self)._PIECE.get(attr)
        module = getattr(self.record, piece) if piece is not None else None
        if module is None:
            raise AttributeError(f"family {self.record.name!r} has no {attr}")
        return getattr(import_piece(module, piece), attr)


def family_module(name: str) -> FamilyParts:
    """The family a recipe names (model.architecture) -> its pieces (compose, training_processor, ...)."""
    if name not in VLM_FAMILIES:
        raise ConfigError(f"unknown vision-language architecture {name!r}; choose from {', '.join(VLM_FAMILIES)}")
    return FamilyParts(VLM_FAMILIES[name])


def processor_module(model_type: str | None, where: str) -> ModuleType:
    """The module whose processor_from_dir builds a checkpoint's processor: the family of its model_type
    (LLaVA's for a directory whose config.json names none: processor_config.json holds the numbers)."""
    record = record_for_model_type(model_type) if model_type is not None else FAMILIES["llava"]
    if record is None or record.processor is None:
        served = sorted(t for r in FAMILIES.values() if r.processor for t in r.model_types)
        raise ConfigError(f"{where}: config.json model_type {model_type!r} has no processor; the families with one "
                          f"read {', '.join(served)}")
    return import_piece(record.processor, "processor")
