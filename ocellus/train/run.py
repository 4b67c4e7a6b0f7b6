"""The two loops every `ocellus train` task runs through (train/tasks/<task>.py chooses one):

  run_trainer(recipe, task)   recipe -> tokenizer, model, data (the task module's build hooks) -> Trainer ->
                              export + model card + loss curve: tasks lm, vit_classify, vlm, qformer_pretrain,
                              contrastive, moco, albef, blip
  run_method(recipe, method)  a post-training method's own run (rm, dpo, grpo, ppo, distill) in train.out_dir:
                              seeded, recipe.json beside it, its export's model card written from the recipe

A Trainer task's module provides build_tokenizer(recipe, out) (None for pixel-only models),
build_model(recipe, tok), build_dataset(recipe, tok, model) -> (dataset, collate) and
export(recipe, model, tok, path). What every Trainer task shares in the model section:
  from: DIR                     load a whole HF-format checkpoint (e.g. stage 1's export) instead of building
  init_from: DIR                a training checkpoint (or its parent `checkpoints/`) whose saved
                                tensors are loaded over the model, e.g. only stage 1's connector
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ocellus.data.bpe import train_bpe
from ocellus.data.hf_stream import streaming
from ocellus.data.shapes import sample_at
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError
from ocellus.eval.harness import predict, score, task_samples
from ocellus.hub.checkpoint import load_model, save_model
from ocellus.hub.model_card import write_model_card
from ocellus.models.generative.checkpoint import save_generator
from ocellus.nn.lora import merged_state_dict
from ocellus.train.distributed import DistInfo, full_model_state, is_fsdp, setup, teardown
from ocellus.train.hf_data import trainer_stream_loader
from ocellus.train.loader import BatchLoader
from ocellus.train.recipe import train_config
from ocellus.train.recipe_data import shapes_config
from ocellus.train.shard_loader import shard_loader
from ocellus.train.state import latest_checkpoint, load_partial
from ocellus.train.trainer import Trainer
from ocellus.train.vlm_export import model_image_size, training_processor
from ocellus.viz.curves import plot_curve

log = logging.getLogger(__name__)


# ---- tokenizer ---------------------------------------------------------------------------------
def build_tokenizer(recipe: dict, out_dir: Path):
    spec = recipe.get("tokenizer")
    if isinstance(spec, str):
        return Tokenizer.from_dir(spec)
    if not isinstance(spec, dict):
        model = recipe.get("model") or {}
        source = model.get("from") or model.get("llm_from")
        if source:
            return Tokenizer.from_dir(source)
        raise ConfigError("recipe needs `tokenizer` (a dir or {train_bpe: {...}}) or a model `from`/`llm_from` dir")
    if "from" in spec:
        return Tokenizer.from_dir(spec["from"])
    if "train_bpe" in spec:
        opts = dict(spec["train_bpe"])
        texts = list(_corpus_texts(recipe, int(opts.pop("corpus_n", 4000))))
        tok = train_bpe(texts, int(opts.pop("vocab_size", 512)), **opts)
        tok.save(out_dir / "tokenizer")
        return tok
    raise ConfigError(f"tokenizer section {spec} needs `from` or `train_bpe`")


def export_model(recipe: dict, model, tok, path: Path) -> Path:
    """The export hook of the Trainer tasks whose model is a checkpoint directory with its tokenizer (lm,
    qformer_pretrain): hub/checkpoint.save_model -> path."""
    save_model(model, path, tokenizer=tok)
    return path


def export_generator(recipe: dict, model, tok, path: Path) -> Path:
    """The export hook of the own-schema tasks that train a generator (image_generation; seed_tokenizer: the
    SEED codec, kind "seed"): a self-contained directory, config.json spec + model.safetensors, that
    `ocellus generate-image` and load_generator read (models/generative/checkpoint.save_generator) -> path."""
    return save_generator(model, path)


def _corpus_texts(recipe: dict, n: int):
    """Text of generated conversations (all kinds) and their role names, for BPE training."""
    cfg = shapes_config(recipe.get("data") or {})
    for i in range(n):
        for m in sample_at(cfg, 1_000_000 + i, "mixed")["messages"]:
            yield m["role"]  # the chat template writes it before every turn: worth a token of its own
            for part in m["content"]:
                if part.get("type") == "text":
                    yield part["text"]


# ---- model -------------------------------------------------------------------------------------
def model_for(recipe: dict, tok, task):
    """model.from's checkpoint, else the task's build_model; then model.init_from's tensors over it."""
    spec = recipe.get("model") or {}
    model = load_model(spec["from"]) if "from" in spec else task.build_model(recipe, tok)
    if spec.get("init_from"):
        _init_from(model, Path(spec["init_from"]))
    return model


def _init_from(model, path: Path) -> None:
    if (path / "latest").exists():
        path = latest_checkpoint(path)
    load_partial(model, load_file(str(path / "model.safetensors")), source=str(path))


# ---- export ------------------------------------------------------------------------------------
def export(recipe: dict, model, tok, out: Path, task) -> Path:
    """The trained model as a checkpoint directory (export.dir, else out/model: the task's layout) with
    its model card (README.md)."""
    path = task.export(recipe, model, tok, Path((recipe.get("export") or {}).get("dir") or out / "model"))
    write_model_card(path, recipe, tok)
    return path


def exportable(recipe: dict, model, tok, info: DistInfo, task):
    """The trained model as export takes it: itself, or under FSDP (its parameters are shards) a plain copy
    built again from the recipe, holding the full tensors gathered to rank 0's CPU (LoRA folded in). A
    collective: every rank calls it; ranks other than 0 get None."""
    if not is_fsdp(model):
        return model
    state = full_model_state(model)
    if not info.is_main:
        return None
    plain = model_for(recipe, tok, task)
    plain.load_state_dict(merged_state_dict(model, state))
    return plain.eval()


# ---- evaluation during training ----------------------------------------------------------------
EVAL_DURING_TRAINING = ("shapes-vqa", "shapes-grounding", "shapes-video")


def _eval_spec(recipe: dict, cfg) -> tuple[str, int] | None:
    """(eval task, n) when train.eval_every asks for evaluation during training; checked before anything is
    built, so a recipe that cannot be scored fails before step 1."""
    if not cfg.eval_every:
        return None
    spec = recipe.get("eval") or {}
    task, n = spec.get("task", "shapes-vqa"), spec.get("n", 200)
    if recipe["task"] != "vlm" or task not in EVAL_DURING_TRAINING:
        raise ConfigError(f"train.eval_every: evaluation during training is for task vlm with eval.task one of "
                          f"{', '.join(EVAL_DURING_TRAINING)}; got task {recipe['task']!r}, eval.task {task!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"eval.n must be a positive integer, got {n!r}")
    return task, n


def _evaluator(recipe: dict, model, tok, cfg):
    """train.eval_every > 0 (task vlm): held-out accuracy on the run's own model every eval_every steps, so a
    run draws accuracy against step and training seconds (issue 18's converged comparison). eval: {task:
    shapes-vqa | shapes-grounding | shapes-video, n: 200}; the samples are the eval seed's, as `ocellus eval` scores them."""
    spec = _eval_spec(recipe, cfg)
    if spec is None:
        return None
    task, n = spec
    size = int((recipe.get("data") or {}).get("image_size") or model_image_size(model))
    samples, processor = task_samples(task, n, size), training_processor(model, tok, size)
    grounding = task == "shapes-grounding"

    def evaluate(m) -> dict:
        result = score(task, samples, predict(m, processor, samples, [], 40 if grounding else 6,
                                              keep_special=grounding))
        out = {kind: round(acc, 4) for kind, (_, acc) in result["table"].items()}
        return {**out, "mean_iou": round(result["mean_iou"], 4)} if grounding else out
    return evaluate


# ---- the loops ---------------------------------------------------------------------------------
def build_trainer(recipe: dict, task, info: DistInfo | None = None) -> tuple[Trainer, object, torch.nn.Module]:
    """The recipe's Trainer as run_trainer trains it, before step 1: out_dir made, seeded, the task's tokenizer,
    model (model_for) and data loader, the stage and optimizer -> (trainer, tokenizer, the unwrapped model).
    Also what a measurement of real training steps builds (scripts/compare_bridges.py times trainer.train_step)."""
    info = info or DistInfo()
    cfg = train_config(recipe)
    _eval_spec(recipe, cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(recipe.get("seed", 0)))
    tok = task.build_tokenizer(recipe, out)
    model = model_for(recipe, tok, task)
    batch = int(recipe["train"].get("batch_size", 8))
    if recipe["data"].get("source") == "shards":   # tar shards, streamed: train/shard_loader.py
        loader = shard_loader(recipe, task, tok, model, batch, info)
    elif streaming(recipe["data"]):                # a Hugging Face dataset, streamed: train/hf_data.py
        loader = trainer_stream_loader(recipe, task, tok, model, batch, info)
    else:
        dataset, collate = task.build_dataset(recipe, tok, model)
        report = getattr(dataset, "bad_samples", None)
        if report is not None and report.skipped and info.is_main:   # skip_bad_samples: said before step 1
            log.info(f"[{recipe.get('name')}] {report.summary()}; each in {report.write(out)}")
        loader = BatchLoader(dataset, batch, collate, seed=int(recipe.get("seed", 0)),
                             rank=info.rank, world_size=info.world_size)
    trainer = Trainer(model, loader, cfg, dist_info=info, evaluate=_evaluator(recipe, model, tok, cfg))
    return trainer, tok, model


def run_trainer(recipe: dict, task) -> Path:
    """Train a validated recipe with the Trainer on the task module's tokenizer, model and data -> the export
    dir (on rank 0; None on the others)."""
    info = setup(recipe.get("distributed", "none"))
    trainer, tok, model = build_trainer(recipe, task, info)
    out = Path(trainer.cfg.out_dir)
    if info.is_main:
        log.info(f"[{recipe.get('name')}] trainable parameters per part:\n{trainer.report}")
        (out / "recipe.json").write_text(json.dumps({k: v for k, v in recipe.items() if k != "_path"}, indent=1))
    trainer.fit()
    path, plain = None, exportable(recipe, model, tok, info, task)
    if info.is_main:
        plot_curve(trainer.history, out / "curve.png", title=recipe.get("name", ""))
        path = export(recipe, plain, tok, out, task)
        log.info(f"[{recipe.get('name')}] exported {path}")
    teardown()
    return path


def run_method(recipe: dict, method) -> Path:
    """A post-training method, method(recipe, cfg, out) -> its export dir (dpo, grpo, ...: the policy; rm: the
    reward model), run in train.out_dir with the recipe's seed; the export gets the recipe's model card."""
    cfg = train_config(recipe)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(recipe.get("seed", 0)))
    (out / "recipe.json").write_text(json.dumps({k: v for k, v in recipe.items() if k != "_path"}, indent=1))
    start = time.perf_counter()
    path = method(recipe, cfg, out)
    write_model_card(path, recipe, Tokenizer.from_dir(path))
    log.info(f"[{recipe.get('name')}] done in {time.perf_counter() - start:.0f} s; model at {path}")
    return path
