"""Recipes: one YAML file says what to train, on what, how; `key=value` overrides change it.

    name: llava_tiny_shapes_align
    task: vlm                      # lm (text next-token) | vit_classify | vlm
    model: {...}                   # see run.build_model: a config to build, or checkpoints to load
    tokenizer: {...}               # a checkpoint dir, or train_bpe on generated text
    data: {source: shapes, kind: caption, n: 8000, seed: 0, max_length: 160, template: chatml}
    train: {max_steps: 300, lr: 1e-3, batch_size: 16, stage: {vision: frozen, connector: full, llm: frozen}}
    export: {dir: runs/x/model}    # HF-format model written at the end
    eval: {task: shapes-vqa, n: 300}

Overrides use dotted paths and YAML values: `train.lr=3e-4 data.n=2000 train.stage.llm=lora`.
`validate` checks the schema first (train/schema.py: unknown keys are errors, never ignored, and every
value has its key's type: `train.max_steps=2.5` is a ConfigError naming the key, not 3 steps), then the
semantics (a vision stage needs an image dataset; a frozen-everything stage trains nothing; ...).
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ocellus.errors import ConfigError
from ocellus.train import schema
from ocellus.train.posttrain import validate_posttrain
from ocellus.train.stages import Stage
from ocellus.train.trainer import TrainConfig

TASKS = ("lm", "vit_classify", "vlm", "qformer_pretrain",    # qformer_pretrain: BLIP-2 stage 1
         "contrastive", "moco",                            # CLIP/SigLIP, MoCo: train/contrastive_run.py
         "albef", "blip")                                  # ALBEF, BLIP: train/albef_blip_run.py
POSTTRAIN_TASKS = ("rm", "dpo", "grpo", "ppo", "distill")   # train/posttrain.py
SOURCES = {"shapes": "image", "digits": "image", "llava_json": "image", "shapes_text": "text",
           "hf": "image", "shards": "image"}   # hf, shards: data/hf_dataset.py, data/shards.py
SOURCE_TASKS = {"hf": ("vlm", "rm", "dpo", "grpo", "ppo"), "shards": ("contrastive",)}
SOURCE_KEYS = {"hf": ("format", "split", "image_root", "cache_dir"), "shards": ("urls", "shuffle_buffer", "num_workers")}
TRAIN_EXTRA = {"batch_size"}
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml where built in: made_by reads many recipes


def read_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """The YAML mapping at `path` with `key=value` overrides applied; ConfigError if unreadable.
    Every runner (`load_recipe` and the task-specific loaders) reads its recipe through this."""
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read recipe {path}: {e}") from e
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    return apply_overrides(recipe, list(overrides))


def recipe_task(path: str | Path) -> str | None:
    """The `task:` of a recipe file, None when it cannot be read (the loader then reports why):
    what `ocellus train` dispatches on."""
    try:
        return read_recipe(path).get("task")
    except ConfigError:
        return None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    path = Path(path)
    recipe = read_recipe(path, overrides)
    recipe.setdefault("name", path.stem)
    recipe["_path"] = str(path)
    validate(recipe, where=str(path))
    return recipe


def check_sources(recipe: dict, where: str = "recipe") -> None:
    """Every checkpoint and file a validated recipe reads (schema.sources: model.from, llm_from, tokenizer,
    data.path, ...) exists, before `ocellus train` builds anything. A missing one that a recipe beside this
    one writes (its export dir, or under its train.out_dir) names that recipe: run it first. A name that
    may be a hub id (one slash, not starting with . / ~) is left to the loader, as is post-training's
    model.from `default` (the embedded model)."""
    for key, value in schema.sources(recipe):
        if Path(value).expanduser().exists() or (key == "model.from" and value == "default"):
            continue
        maker = made_by(value, Path(recipe.get("_path", "recipe.yaml")))
        if maker:
            raise ConfigError(f"{where}: {key} {value} does not exist yet; {maker} writes it: run "
                              f"`ocellus train {maker}` first")
        if key == "data.path" or value.startswith((".", "/", "~")) or value.count("/") != 1:
            raise ConfigError(f"{where}: {key} {value} does not exist")


def made_by(path: str, recipe_path: Path) -> str | None:
    """The recipe in recipe_path's folder or a sibling folder (recipes/*/) whose run writes `path`: its
    export.dir, or a path under its train.out_dir (its export, tokenizer, checkpoints)."""
    target = Path(path).resolve()
    folder = recipe_path.parent
    for candidate in (sorted(folder.glob("*.yaml")) + sorted(folder.parent.glob("*/*.yaml")))[:400]:
        if candidate.resolve() == recipe_path.resolve():
            continue
        try:
            other = yaml.load(candidate.read_text(), Loader=FAST_LOADER)
        except (OSError, yaml.YAMLError):
            continue
        train, export = (other.get("train"), other.get("export")) if isinstance(other, dict) else (None, None)
        outputs = [d.get(k) for d, k in ((train, "out_dir"), (export, "dir")) if isinstance(d, dict)]
        if any(isinstance(o, str) and (target == Path(o).resolve() or Path(o).resolve() in target.parents)
               for o in outputs):
            return str(candidate)
    return None


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string; a number was meant
            try:
                value = float(value)
            except ValueError:
                pass
        node = recipe
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a mapping")
        node[parts[-1]] = value
    return recipe


def train_config(recipe: dict) -> TrainConfig:
    train = {k: v for k, v in (recipe.get("train") or {}).items() if k not in TRAIN_EXTRA}
    if "betas" in train:
        train["betas"] = tuple(train["betas"])
    for k in ("lr", "weight_decay", "min_lr_ratio", "clip_grad_norm"):  # YAML reads 1e-3 as a string
        if isinstance(train.get(k), str):
            train[k] = float(train[k])
    return TrainConfig(**train)


def validate(recipe: dict, where: str = "recipe") -> None:
    def bad(msg):
        raise ConfigError(f"{where}: {msg}")

    task = recipe.get("task")
    if task not in TASKS + POSTTRAIN_TASKS:
        bad(f"task must be one of {TASKS + POSTTRAIN_TASKS}, got {task!r}")
    schema.check(recipe, where)   # every key known and of its type, before any semantic check reads one
    if task in POSTTRAIN_TASKS:
        validate_posttrain(recipe, bad)
    data = recipe.get("data") or {}
    source = data.get("source")
    if source not in SOURCES:
        bad(f"data.source must be one of {sorted(SOURCES)}, got {source!r}")
    if task in ("vlm", "vit_classify", "qformer_pretrain", "contrastive", "moco", "albef", "blip") and \
            SOURCES[source] != "image":
        bad(f"task {task!r} trains on images but data.source {source!r} is text only")
    if task == "lm" and SOURCES[source] != "text":
        bad(f"task 'lm' pretrains the decoder on text; data.source {source!r} is an image dataset")
    for other, keys in SOURCE_KEYS.items():
        for key in keys:
            if key in data and source != other:
                bad(f"data.{key} is read with data.source {other} only; data.source is {source!r}")
    if source in SOURCE_TASKS and task not in SOURCE_TASKS[source]:
        bad(f"data.source {source} trains task {' / '.join(SOURCE_TASKS[source])}, not {task!r}")
    if source == "shards" and not data.get("urls"):
        bad("data.source shards needs data.urls (tar shards: 'dir/shard-{000..003}.tar', a directory or a list)")
    for key in ("shuffle_buffer", "num_workers"):
        if key in data and data[key] < (1 if key == "shuffle_buffer" else 0):
            bad(f"data.{key} must be >= {1 if key == 'shuffle_buffer' else 0}, got {data[key]}")
    if source == "llava_json" and not data.get("path"):
        bad("data.source llava_json needs data.path (the data.json file)")
    train = recipe.get("train") or {}
    try:
        cfg = train_config(recipe)
    except (TypeError, ValueError) as e:
        bad(f"train: {e}")
    if cfg.max_steps <= 0 or cfg.grad_accum <= 0 or int(train.get("batch_size", 1)) <= 0:
        bad("train.max_steps, train.grad_accum and train.batch_size must be positive")
    stage = Stage.parse(cfg.stage) if cfg.stage else None
    if stage is not None:
        if task not in ("vlm", "qformer_pretrain", "contrastive", "albef", "blip", *POSTTRAIN_TASKS) and \
                set(stage.parts) - {"llm", "vision"}:
            bad(f"task {task!r} has no parts {sorted(set(stage.parts) - {'llm', 'vision'})}")
        if all(p.mode == "frozen" for p in stage.parts.values()) and task == "vlm" and \
                len(stage.parts) == 3:
            bad("train.stage freezes every part: nothing would train")
    model = recipe.get("model") or {}
    if task == "vlm" and not ({"from", "vision_from", "config"} & set(model)):
        bad("model needs `from` (a VLM checkpoint), or `vision_from` + `llm_from` (+ connector), or `config`")
