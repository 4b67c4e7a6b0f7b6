"""The recipe schema: every key a recipe (`ocellus train`, the Trainer and post-training tasks of train/tasks)
may hold, and the type its value must have, checked before a tokenizer, model or dataset is built.

    check(recipe, where)   ConfigError "<where>: train.max_steps must be an integer, got 'five'" or
                           "<where>: unknown model keys ['hidden_sise'] for task 'lm'; known: [...]"
    sources(recipe)        the (key, path) of every checkpoint / file the run reads (SOURCE keys), which
                           recipe.check_sources looks for before `ocellus train` builds anything
    check(recipe, where, runner_fields(TRAIN_KEYS))   the runners with schemas of their own (image_generation,
                           unified, seed_tokenizer): their train sections, TRAIN plus their keys

A `Kind` is a named test: INT takes integers only (not 2.5, not "5", not true), FLOAT any number (and
the strings YAML 1.1 leaves "1e-3" as, turned into floats in place), BOOL true/false only. Sections whose
fields are a dataclass's or a function's (train: TrainConfig; method: DPOConfig, GRPOConfig, ...;
tokenizer.train_bpe: train_bpe; train.stage parts: PartSpec) take their kinds from its annotations
(`kinds_of`), so a new field is checked the day it is added. Mappings a library reads as config.json
(model.config, model.vision, model.text, model.qformer, ...) are checked as mappings; their fields are
the config parser's to check.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

from ocellus.data.bpe import train_bpe
from ocellus.data.hf_dataset import FORMATS as HF_FORMATS
from ocellus.data.shapes import KINDS
from ocellus.data.shapes_phrasing import PHRASINGS
from ocellus.data.templates import TEMPLATES
from ocellus.errors import ConfigError
from ocellus.models.contrastive.moco import MoCoConfig
from ocellus.hub.families import VLM_FAMILIES
from ocellus.train.distill import DistillConfig
from ocellus.train.dpo import DPOConfig
from ocellus.train.grpo import GRPOConfig
from ocellus.train.posttrain import weaken
from ocellus.train.ppo import PPOConfig
from ocellus.train.rewards import REWARDS
from ocellus.train.stages import MODES, PartSpec
from ocellus.train.trainer import PRECISIONS, TrainConfig


@dataclass(frozen=True)
class Kind:
    name: str                                   # what an error says the value must be: "an integer"
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda v: v  # the value the recipe holds afterwards
    fields: dict | None = None                  # a mapping's keys -> kinds (others are unknown keys)
    values: "Kind | None" = None                # a mapping with any keys, each value of this kind
    source: bool = False                        # a path the run reads (recipe.check_sources: it must exist)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; a number was meant
        try:
            float(v)
        except ValueError:
            return False
        return True
    return isinstance(v, (int, float)) and not isinstance(v, bool)


INT = Kind("an integer", _is_int)
FLOAT = Kind("a number", _is_number, lambda v: float(v) if isinstance(v, str) else v)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
STR = Kind("a string", lambda v: isinstance(v, str))
MAPPING = Kind("a mapping", lambda v: isinstance(v, dict))
SOURCE = Kind("a string", lambda v: isinstance(v, str), source=True)   # a checkpoint dir or file the run reads
PLURALS = {INT.name: "integers", FLOAT.name: "numbers", STR.name: "strings", BOOL.name: "booleans"}


def mapping(fields: dict | None = None, values: Kind | None = None, name: str = "a mapping") -> Kind:
    return Kind(name, lambda v: isinstance(v, dict), fields=fields, values=values)


def optional(kind: Kind) -> Kind:
    return Kind(f"{kind.name} or null", lambda v: v is None or kind.accepts(v),
                lambda v: None if v is None else kind.convert(v), kind.fields, kind.values, kind.source)


def list_of(kind: Kind, length: int | None = None, name: str | None = None) -> Kind:
    def accepts(v):
        return isinstance(v, (list, tuple)) and (length is None or len(v) == length) and all(kind.accepts(x) for x in v)
    what = f"{length} " if length is not None else ""
    each = PLURALS.get(kind.name, f"values each {kind.name}")
    return Kind(name or f"a list of {what}{each}", accepts, lambda v: [kind.convert(x) for x in v])


def one_of(*choices: str) -> Kind:
    return Kind(f"one of {', '.join(choices)}", lambda v: isinstance(v, str) and v in choices)


def either(kind: Kind, other: Kind) -> Kind:
    """A value of `kind` or of `other` (a mode string or a PartSpec mapping, a directory or a mapping)."""
    return Kind(f"{kind.name} or {other.name}", lambda v: kind.accepts(v) or other.accepts(v),
                lambda v: kind.convert(v) if kind.accepts(v) else other.convert(v),
                other.fields or kind.fields, other.values or kind.values, kind.source or other.source)


BASIC = {int: INT, float: FLOAT, bool: BOOL, str: STR, dict: MAPPING}


def kind_of(hint) -> Kind:
    """The Kind of a type annotation: int, float, bool, str, dict, X | None, tuple[X, X], tuple[X, ...],
    Iterable[X]."""
    if hint in BASIC:
        return BASIC[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and type(None) in args and len(args) == 2:
        return optional(kind_of(next(a for a in args if a is not type(None))))
    if (origin is tuple and len(args) == 2 and args[1] is Ellipsis) or origin in (list, Iterable):
        return list_of(kind_of(args[0]))
    if origin is tuple and len(set(args)) == 1:
        return list_of(kind_of(args[0]), len(args))
    if origin is dict:
        return MAPPING
    raise TypeError(f"no recipe kind for the annotation {hint!r}")


def kinds_of(obj, skip: Iterable[str] = ()) -> dict[str, Kind]:
    """key -> Kind for a dataclass's fields or a function's keyword parameters, from their annotations."""
    hints = typing.get_type_hints(obj)
    names = [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else \
        list(inspect.signature(obj).parameters)
    return {name: kind_of(hints[name]) for name in names if name not in skip}


# ---- the sections --------------------------------------------------------------------------------
WEIGHTS = mapping(values=FLOAT, name="a mapping of name -> number (YAML: {qa: 4, caption: 1})")
DATA = {
    "source": STR, "kind": one_of(*KINDS, "mixed"), "n": INT, "seed": INT, "max_length": optional(INT),
    "template": one_of(*TEMPLATES), "pack": BOOL, "image_size": optional(INT), "path": SOURCE,
    "skip_bad_samples": BOOL, "train_on": one_of("assistant", "last", "all"), "max_objects": INT,
    "min_objects": INT, "answer_prompt": optional(STR), "eval_n": INT, "shapes_seed": INT, "kind_weights": WEIGHTS,
    "qa_weights": WEIGHTS, "labels": one_of("single", "objects"), "image_text": one_of("drop", "description", "caption"),
    "conversation_turns": list_of(INT, 2, name="[min, max] integers"), "hard_negatives": FLOAT, "augment": MAPPING,
    "interleave": INT, "phrasing": one_of(*PHRASINGS), "qa_turns": list_of(INT, 2, name="[min, max] integers"),
    # source hf (data/hf_dataset.py) and shards (data/shards.py): docs/DATA_FORMATS.md
    "format": one_of(*HF_FORMATS), "split": STR, "image_root": SOURCE, "cache_dir": STR,
    "urls": either(STR, list_of(STR)), "shuffle_buffer": INT, "num_workers": INT, "streaming": BOOL,
    # source shapes_video (data/shapes_video.py): moving-shapes clips for a video model
    "frames": INT, "max_distractors": INT, "question_variants": BOOL,
}
STAGE_PART = either(one_of(*MODES), mapping(kinds_of(PartSpec)))
TRAIN = {**kinds_of(TrainConfig), "batch_size": INT, "precision": one_of(*PRECISIONS),
         "stage": mapping(values=STAGE_PART, name="a mapping of part -> mode or {mode, rank, lr, ...}")}
TOKENIZER = either(SOURCE, mapping({"from": SOURCE, "train_bpe": mapping({**kinds_of(train_bpe, skip=("texts",)),
                                                                     "corpus_n": INT})}))

# model: per task; a vlm's keys also per model.architecture (what its family's compose reads)
PARTS = {"vision_from": SOURCE, "llm_from": SOURCE, "image_token": STR}
FEATURES = {"feature_layer": INT, "feature_select": one_of("default", "full")}
LLAVA = {**PARTS, **FEATURES, "connector": mapping({"depth": INT, "act": STR})}
ARCHITECTURES = {
    "llava": LLAVA,
    "llava_next": {**LLAVA, "image_grid_pinpoints": list_of(list_of(INT, 2), name="a list of [height, width] pairs")},
    "blip2": {**PARTS, "qformer_from": SOURCE, "qformer": MAPPING, "variant": one_of("blip2", "minigpt4")},
    "flamingo": {**PARTS, **FEATURES, "vision": MAPPING, "perceiver": MAPPING, "cross_attn": MAPPING},
    "qwen_vl": {**PARTS, "feature_layer": INT, "resampler": mapping({"num_queries": INT, "num_heads": INT,
                                                                                   "pos_scale": FLOAT})},
    "qwen2_vl": {**PARTS, "config": MAPPING, "video_token": STR},
    "qwen2_5_vl": {**PARTS, "config": MAPPING, "video_token": STR},
    "internvl": {**PARTS, **FEATURES, "downsample_ratio": FLOAT, "min_tiles": INT, "max_tiles": INT,
                 "use_thumbnail": BOOL},
    "xgen_mm": {**PARTS, **FEATURES, "image_grid_pinpoints": list_of(list_of(INT, 2), name="a list of [height, width] pairs"),
                "perceiver": mapping({k: INT for k in ("depth", "num_latents", "heads", "head_dim", "ff_mult")})},
}
LOADED = {"from": SOURCE, "init_from": SOURCE}   # a whole checkpoint, or a training checkpoint's tensors over the model
WEAKEN = {"weaken": mapping(kinds_of(weaken, skip=("model",)))}
MODEL = {
    "lm": {**LOADED, "config": MAPPING},
    "vit_classify": {**LOADED, "config": MAPPING, "num_classes": INT, "box_loss": FLOAT,
                     "box_background": one_of("cell", "none")},   # train/vit_scene.BOX_BACKGROUNDS
    "qformer_pretrain": {**LOADED, "vision_from": SOURCE, "qformer": MAPPING, "qformer_init": SOURCE, "embed_dim": INT,
                         "label_smoothing": FLOAT},
    "contrastive": {**LOADED, "architecture": one_of("clip", "siglip"), "vision": MAPPING, "text": MAPPING,
                    "projection_dim": optional(INT)},
    "moco": {**LOADED, "vision": MAPPING, "moco": mapping(kinds_of(MoCoConfig))},
    "albef": {**LOADED, "vision": MAPPING, "text": MAPPING, "align": MAPPING},
    "blip": {**LOADED, "vision": MAPPING, "text": MAPPING, "align": MAPPING, "objectives": list_of(one_of("itc", "itm", "lm"))},
    "rm": {"from": SOURCE}, "distill": {"from": SOURCE},   # post-training: from may also be `default`
    "dpo": {"from": SOURCE, **WEAKEN}, "grpo": {"from": SOURCE, **WEAKEN}, "ppo": {"from": SOURCE, **WEAKEN},
}
REWARD = {"rewards": list_of(one_of(*REWARDS), name=f"a list of names from {sorted(REWARDS)}"),
          "reward_weights": list_of(FLOAT), "reward_model": SOURCE}
METHOD = {
    "rm": {},
    "dpo": {**kinds_of(DPOConfig), "rejected": one_of("plausible", "model")},
    "grpo": {**kinds_of(GRPOConfig), **REWARD},
    "ppo": {**kinds_of(PPOConfig), **REWARD},
    "distill": kinds_of(DistillConfig),
}


def runner_fields(train: dict[str, Kind]) -> dict[str, Kind]:
    """The top level of a recipe whose runner has a schema of its own (tasks image_generation, unified,
    seed_tokenizer): its train section typed (`train`: TRAIN plus the runner's keys), model / data / eval left to
    the runner's own checks."""
    return {"task": STR, "name": STR, "seed": INT, "model": MAPPING, "data": MAPPING, "eval": optional(MAPPING),
            "train": mapping(train), "_path": STR}


def check_runner(recipe: dict, where: str, task: str, train: dict[str, Kind]) -> None:
    """The top level of an own-schema runner's recipe (image_generation, unified): its task, then every key
    known and typed by runner_fields(train) (an unknown one named with the known ones), or one ConfigError."""
    if recipe.get("task") != task:
        raise ConfigError(f"{where}: task must be {task!r}, got {recipe.get('task')!r}")
    check(recipe, where, runner_fields(train))


def model_fields(task: str, model) -> dict[str, Kind]:
    if task != "vlm":
        return MODEL[task]
    arch = model.get("architecture", "llava") if isinstance(model, dict) else "llava"
    every = {k: v for keys in ARCHITECTURES.values() for k, v in keys.items()}   # a family this table lacks
    return {**LOADED, "architecture": one_of(*VLM_FAMILIES), **ARCHITECTURES.get(arch, every)}


def top_fields(task: str, model) -> dict[str, Kind]:
    return {
        "name": STR, "task": STR, "seed": INT, "distributed": one_of("none", "ddp", "fsdp"), "_path": STR,
        "data": mapping(DATA), "train": mapping(TRAIN), "tokenizer": TOKENIZER, "export": mapping({"dir": STR}),
        "eval": optional(mapping({"task": STR, "n": INT})), "model": mapping(model_fields(task, model)),
        "method": mapping(METHOD.get(task, {})),
    }


def check(recipe: dict, where: str = "recipe", fields: dict[str, Kind] | None = None) -> None:
    """Every key of `recipe` known and of its kind (fields: the top level's, default `top_fields` of its task),
    or one ConfigError naming the key and the kind. Numbers given as YAML strings ("1e-3") become floats in
    place. recipe["task"] must already be valid."""
    for dotted, kind, holder, key in _walk(recipe, where, fields):
        if not kind.accepts(holder[key]):
            shown = repr(holder[key]) if len(repr(holder[key])) <= 60 else repr(holder[key])[:57] + "..."
            raise ConfigError(f"{where}: {dotted} must be {kind.name}, got {shown}")
        holder[key] = kind.convert(holder[key])


def sources(recipe: dict) -> list[tuple[str, str]]:
    """(dotted key, path) for every checkpoint or file a checked recipe reads: model.from, vision_from,
    llm_from, init_from, tokenizer, data.path, method.reward_model, ..."""
    return [(dotted, holder[key]) for dotted, kind, holder, key in _walk(recipe, "recipe")
            if kind.source and isinstance(holder[key], str)]


def _walk(recipe: dict, where: str, fields: dict[str, Kind] | None = None):
    """(dotted key, Kind, the mapping holding it, key) for every key of the recipe, a mapping's own keys right
    after it (read once the caller is done with it); an unknown key is a ConfigError."""
    task = recipe["task"]

    def walk(value: dict, fields: dict | None, values: Kind | None, path: str):
        if fields is not None:
            unknown = sorted(str(k) for k in value if k not in fields)
            if unknown:
                section = path or "top-level"
                qualifier = f" for task {task!r}" if path.split(".")[0] in ("model", "method") else ""
                known = sorted(k for k in fields if not k.startswith("_"))
                raise ConfigError(f"{where}: unknown {section} keys {unknown}{qualifier}; known: {known}")
        for key in list(value):
            kind = values if fields is None else fields[key]
            dotted = f"{path}.{key}" if path else str(key)
            yield dotted, kind, value, key
            if isinstance(value[key], dict) and (kind.fields is not None or kind.values is not None):
                yield from walk(value[key], kind.fields, kind.values, dotted)
    return walk(recipe, fields or top_fields(task, recipe.get("model")), None, "")
