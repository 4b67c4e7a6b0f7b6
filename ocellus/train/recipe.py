"""Recipes: one YAML file says what to train, on what, how; `key=value` overrides change it.

    name: llava_tiny_shapes_align
    task: vlm                      # one of train/tasks.TASKS: lm, vit_classify, vlm, ..., dpo, unified, ...
    model: {...}                   # what the task builds (train/tasks/<task>.py), or checkpoints to load
    tokenizer: {...}               # a checkpoint dir, or train_bpe on generated text
    data: {source: shapes, kind: caption, n: 8000, seed: 0, max_length: 160, template: chatml}
    train: {max_steps: 300, lr: 1e-3, batch_size: 16, stage: {vision: frozen, connector: full, llm: frozen}}
    export: {dir: runs/x/model}    # HF-format model written at the end
    eval: {task: shapes-vqa, n: 300}

Overrides use dotted paths and YAML values: `train.lr=3e-4 data.n=2000 train.stage.llm=lora`.
A recipe is loaded and validated by its task (train/tasks/__init__.py: load_recipe, validate); the Trainer and
post-training tasks share `check_recipe` here: the schema first (train/schema.py: unknown keys are errors,
never ignored, and every value has its key's type: `train.max_steps=2.5` is a ConfigError naming the key, not
3 steps), then the semantics (a vision stage needs an image dataset; a frozen-everything stage trains
nothing; ...).
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ocellus.errors import ConfigError
from ocellus.train import schema
from ocellus.train.stages import Stage
from ocellus.train.trainer import TrainConfig

SOURCES = {"shapes": "image", "digits": "image", "llava_json": "image", "shapes_text": "text",
           "hf": "image", "shards": "image", "shapes_video": "image"}   # data/hf_dataset.py, shards.py, shapes_video.py
SOURCE_TASKS = {"hf": ("vlm", "rm", "dpo", "grpo", "ppo"), "shards": ("contrastive", "moco", "albef", "blip", "vlm"), "shapes_video": ("vlm",)}
SOURCE_KEYS = {"hf": ("format", "split", "image_root", "cache_dir", "streaming", "shuffle_buffer", "num_workers"),
               "shards": ("urls", "shuffle_buffer", "num_workers"),
               "shapes_video": ("frames", "max_distractors", "question_variants")}
TRAIN_EXTRA = {"batch_size"}
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml where built in: made_by reads many recipes


def read_recipe(path: str | Path, overrides: list[str] = (), check=None) -> dict:
    """The YAML mapping at `path` with `key=value` overrides applied; ConfigError if unreadable.
    Every loader (train/tasks.load_recipe and the runners' own) reads its recipe through this; a runner's
    loader passes its check(recipe, where), run here with where = the path."""
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read recipe {path}: {e}") from e
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    recipe = apply_overrides(recipe, list(overrides))
    if check is not None:
        check(recipe, str(path))
    return recipe


def recipe_task(path: str | Path) -> str | None:
    """The `task:` of a recipe file, None when it cannot be read (the loader then reports why)."""
    try:
        return read_recipe(path).get("task")
    except ConfigError:
        return None


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


def check_recipe(recipe: dict, where: str = "recipe", *, data: str | None = None,
                 parts: tuple[str, ...] | None = None, method: bool = False) -> Stage | None:
    """The checks every Trainer and post-training task shares (its task module's `validate` calls this with
    what the task needs): data "image" / "text" (the kind of data.source it trains on, None: either),
    parts (the only train.stage parts it has, None: any), method (a post-training method: pairs / prompts from
    the shapes ground truth or TRL rows, and a model.from to start from). -> the parsed train.stage."""
    def bad(msg):
        raise ConfigError(f"{where}: {msg}")

    task = recipe["task"]
    schema.check(recipe, where)   # every key known and of its type, before any semantic check reads one
    if method:   # its keys and their types: train/schema.py (method: each method's config fields)
        if (recipe.get("data") or {}).get("source") not in ("shapes", "hf"):
            bad(f"task {task!r} builds its preference pairs / prompts from the shapes ground truth (data.source: "
                f"shapes) or reads TRL rows of a Hugging Face dataset (data.source: hf)")
        if "from" not in (recipe.get("model") or {}):
            bad(f"task {task!r} needs model.from (a checkpoint dir, or `default` for the embedded tiny model)")
    data_section = recipe.get("data") or {}
    source = data_section.get("source")
    if source not in SOURCES:
        bad(f"data.source must be one of {sorted(SOURCES)}, got {source!r}")
    if data == "image" and SOURCES[source] != "image":
        bad(f"task {task!r} trains on images but data.source {source!r} is text only")
    if data == "text" and SOURCES[source] != "text":
        bad(f"task {task!r} pretrains the decoder on text; data.source {source!r} is an image dataset")
    for key in sorted({k for keys in SOURCE_KEYS.values() for k in keys} & set(data_section)):
        readers = [other for other, keys in SOURCE_KEYS.items() if key in keys]
        if source not in readers:
            bad(f"data.{key} is read with data.source {' or '.join(readers)} only; data.source is {source!r}")
    if source == "hf" and not data_section.get("streaming"):
        for key in ("shuffle_buffer", "num_workers"):
            if key in data_section:
                bad(f"data.{key} is read by a streamed dataset (data.streaming: true); a map-style one is shuffled "
                    f"whole by the loader and made in the training process")
    if source in SOURCE_TASKS and task not in SOURCE_TASKS[source]:
        bad(f"data.source {source} trains task {' / '.join(SOURCE_TASKS[source])}, not {task!r}")
    if source == "shards" and not data_section.get("urls"):
        bad("data.source shards needs data.urls (tar shards: 'dir/shard-{000..003}.tar', a directory or a list)")
    for key in ("shuffle_buffer", "num_workers"):
        if key in data_section and data_section[key] < (1 if key == "shuffle_buffer" else 0):
            bad(f"data.{key} must be >= {1 if key == 'shuffle_buffer' else 0}, got {data_section[key]}")
    if source == "llava_json" and not data_section.get("path"):
        bad("data.source llava_json needs data.path (the data.json file)")
    train = recipe.get("train") or {}
    try:
        cfg = train_config(recipe)
    except (TypeError, ValueError) as e:
        bad(f"train: {e}")
    if cfg.max_steps <= 0 or cfg.grad_accum <= 0 or int(train.get("batch_size", 1)) <= 0:
        bad("train.max_steps, train.grad_accum and train.batch_size must be positive")
    stage = Stage.parse(cfg.stage) if cfg.stage else None
    if stage is not None and parts is not None and set(stage.parts) - set(parts):
        bad(f"task {task!r} has no parts {sorted(set(stage.parts) - set(parts))}")
    return stage
