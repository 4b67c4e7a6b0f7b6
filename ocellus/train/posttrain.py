"""`ocellus train recipes/posttrain/<method>.yaml`: the recipe glue of the post-training methods.

    task: rm | dpo | grpo | ppo | distill
    model: {from: DIR | default}            the policy (or reward-model backbone / teacher) to start from;
                                            `default` is the embedded tiny LLaVA (ocellus.default_model_dir())
    data: {source: shapes, n, seed, image_size, qa_weights, kind}   preference pairs (rm, dpo), prompts
                                            (grpo, ppo: kind qa | grounding) or QA conversations (distill)
    method: {...}                            the method's own options (DPOConfig, GRPOConfig, PPOConfig,
                                            DistillConfig fields; rewards: [count, iou, ...]; reward_model: DIR)
    train: {...}                             TrainConfig (max_steps, lr, batch_size, stage, out_dir, ...)
    eval: {n: 500}                           held-out evaluation before and after (scenes of the eval seed)

Each run writes out_dir/metrics.jsonl (the Trainer's, for rm/dpo/distill), out_dir/posttrain.jsonl
(the method's own per-step numbers: rewards, KL, margins, accuracies), out_dir/eval.json (before/after
tables), PNG curves and the trained model (out_dir/model, HF format).
"""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import torch

from ocellus.errors import ConfigError
from ocellus.eval.harness import EVAL_SEED, predict, score
from ocellus.eval.metrics import format_table
from ocellus.hub.checkpoint import load_model
from ocellus.hub.resolve import default_model_dir
from ocellus.models.families.registry import load_processor
from ocellus.data.shapes import sample_at, ShapesConfig
from ocellus.train.hf_data import preference_dataset, prompt_dataset
from ocellus.train.loader import BatchLoader
from ocellus.train.preference import preference_pair, prompt_row, shapes_preference, shapes_prompt
from ocellus.train.rewards import iou_reward, REWARDS
from ocellus.train.stages import apply_stage, param_groups, parts_of, Stage
from ocellus.train.trainer import cosine_schedule, make_adamw, Trainer
from ocellus.viz.curves import plot_curve

TASKS = ("rm", "dpo", "grpo", "ppo", "distill")
MODULES = {"rm": "reward_model", "dpo": "dpo", "grpo": "grpo", "ppo": "ppo", "distill": "distill"}


def model_dir(spec: dict) -> Path:
    source = spec.get("from")
    if not source:
        raise ConfigError("model.from is required: the checkpoint post-training starts from (or `default`)")
    return Path(default_model_dir()) if source == "default" else Path(source)


def load_start(spec: dict):
    """-> (model, processor) from model.from, weakened when model.weaken is given (see `weaken`)."""
    source = model_dir(spec)
    model, processor = load_model(source), load_processor(source)
    if spec.get("weaken"):
        weaken(model, **spec["weaken"])
    return model, processor


@torch.no_grad()
def weaken(model, noise: float, seed: int = 0, parts: tuple[str, ...] = ("llm", "connector")) -> None:
    """A deliberately weakened start for showing that a method moves a score: Gaussian noise of `noise`
    times each weight matrix's own std added to the matrices of the named parts (seeded). On the embedded
    tiny LLaVA, noise 1.0 takes held-out counting accuracy from ~73% to ~53%."""
    named = parts_of(model)
    unknown = set(parts) - set(named)
    if unknown:
        raise ConfigError(f"model.weaken.parts {sorted(unknown)} are not parts of this model ({sorted(named)})")
    g = torch.Generator().manual_seed(int(seed))
    for part in parts:
        for w in named[part].parameters():
            if w.dim() >= 2:
                w.add_(torch.randn(w.shape, generator=g).to(w.dtype) * float(noise) * w.std())


def validate_posttrain(recipe: dict, bad) -> None:
    """The post-training part of recipe validation (train/recipe.py calls it for these tasks)."""
    task = recipe["task"]   # its keys and their types: train/schema.py (method: each method's config fields)
    if (recipe.get("data") or {}).get("source") not in ("shapes", "hf"):
        bad(f"task {task!r} builds its preference pairs / prompts from the shapes ground truth (data.source: shapes) "
            f"or reads TRL rows of a Hugging Face dataset (data.source: hf)")
    if "from" not in (recipe.get("model") or {}):
        bad(f"task {task!r} needs model.from (a checkpoint dir, or `default` for the embedded tiny model)")


def shapes_config(recipe: dict, seed: int | None = None):
    # lazy: train's task modules and posttrain / recipe / schema import each other (issue 19 item 4: one task table)
    from ocellus.train.run import _shapes_config
    data = dict(recipe.get("data") or {})
    if seed is not None:
        data["seed"] = seed
    return _shapes_config(data)


def eval_config(size: int, qa_type: str | None = None):
    """The harness's held-out scenes (its seed and sizes), optionally one QA type only."""
    extra = {"qa_weights": ((qa_type, 1.0),)} if qa_type else {}
    return ShapesConfig(image_size=size, seed=EVAL_SEED, min_size=max(0.18, 6.5 / size), **extra)


def heldout_qa(model, processor, n: int, qa_type: str | None = None, kind: str = "qa") -> dict:
    """Greedy answers on n held-out shapes questions -> {type: (n, accuracy)} (kind grounding: acc@0.5
    and mean IoU)."""
    size = int(model.vision_tower.config.image_size)
    cfg = eval_config(size, qa_type)
    samples = [sample_at(cfg, i, kind) for i in range(n)]
    model.eval()
    preds = predict(model, processor, samples, [], 40 if kind == "grounding" else 6, batch_size=32)
    if kind == "grounding":
        table = score("shapes-grounding", samples, preds)["table"]
        ious = iou_reward(None, preds, [s["answer"] for s in samples])
        table["mean IoU"] = (len(ious), sum(ious) / len(ious))
        return table
    return score("shapes-vqa", samples, preds)["table"]


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))


def _table_dict(table: dict) -> dict:
    return {k: [int(v[0]), float(v[1])] for k, v in table.items()}


def report(out: Path, name: str, before: dict, after: dict, extra: dict | None = None) -> dict:
    result = {"before": _table_dict(before), "after": _table_dict(after), **(extra or {})}
    _write_json(out / "eval.json", result)
    print(f"[{name}] held-out before:\n{format_table(before, score_name='accuracy', percent=True)}")
    print(f"[{name}] held-out after:\n{format_table(after, score_name='accuracy', percent=True)}")
    return result


def plot(history: list[dict], out: Path, keys: list[str], name: str) -> None:
    for key in keys:
        if any(key in h for h in history):
            plot_curve(history, out / f"{key.replace('/', '_')}.png", key=key, title=name)


def export_vlm(model, tok, size: int, path: Path) -> Path:
    # lazy: train's task modules and posttrain / recipe / schema import each other (issue 19 item 4: one task table)
    from ocellus.train.run import export
    return export({"task": "vlm", "data": {"image_size": size}, "export": {"dir": str(path)}}, model, tok, path)


def run_posttrain(recipe: dict) -> Path:
    # lazy: train's task modules and posttrain / recipe / schema import each other (issue 19 item 4: one task table)
    from ocellus.train.recipe import train_config
    task = recipe["task"]
    cfg = train_config(recipe)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(recipe.get("seed", 0)))
    (out / "recipe.json").write_text(json.dumps({k: v for k, v in recipe.items() if k != "_path"}, indent=1))
    start = time.perf_counter()
    if task not in TASKS:
        raise ConfigError(f"unknown post-training task {task!r}; known: {TASKS}")
    module = importlib.import_module(f"ocellus.train.{MODULES[task]}")
    path = module.run(recipe, cfg, out)
    print(f"[{recipe.get('name')}] done in {time.perf_counter() - start:.0f} s; model at {path}")
    return path


# ---- shared by the methods that run under the Trainer (rm, dpo, distill) ----------------------------

def pair_dataset(recipe: dict, n: int | None = None, seed: int | None = None):
    """Preference pairs from shapes QA ground truth (preference.shapes_preference), made on access."""
    # lazy: train's task modules and posttrain / recipe / schema import each other (issue 19 item 4: one task table)
    from ocellus.train.run import EncodedDataset
    if (recipe.get("data") or {}).get("source") == "hf" and seed is None:   # TRL rows: train/hf_data.py
        return preference_dataset(recipe)
    cfg = shapes_config(recipe, seed)
    n = int(n if n is not None else (recipe.get("data") or {}).get("n", 2000))
    dataset = EncodedDataset(n, lambda i: preference_pair(shapes_preference(cfg, i), i))
    dataset.make_row = lambda i: shapes_preference(cfg, i)   # the raw row, for methods that rewrite it
    return dataset


def fit(objective, dataset, collate, recipe: dict, cfg, out: Path, plot_keys: list[str]) -> list[dict]:
    """Run the Trainer on an objective module (forward(**batch).loss, its parts() the policy's); write
    the objective's own per-step metrics (objective.history) to posttrain.jsonl and plot them."""
    loader = BatchLoader(dataset, int((recipe.get("train") or {}).get("batch_size", 8)), collate,
                         seed=int(recipe.get("seed", 0)))
    trainer = Trainer(objective, loader, cfg)
    print(f"[{recipe.get('name')}] trainable parameters per part:\n{trainer.report}")
    trainer.fit()
    history = [{"step": i // cfg.grad_accum + 1, **m} for i, m in enumerate(objective.history)]
    losses = {h["step"]: h["loss"] for h in trainer.history}
    for h in history:
        h["loss"] = losses.get(h["step"])
    (out / "posttrain.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    plot(history, out, ["loss", *plot_keys], recipe.get("name", ""))
    return history


# ---- shared by the RL methods (grpo, ppo): their own loop around rollouts ----------------------------

def optimizer_for(model, cfg):
    """apply_stage + AdamW over the stage's param groups + the cosine schedule: what the Trainer does,
    for loops that alternate sampling and updates."""
    stage = Stage.parse(cfg.stage or {part: "full" for part in parts_of(model)})
    report = apply_stage(model, stage)
    optimizer = make_adamw(param_groups(model, stage, cfg.lr, cfg.weight_decay), cfg)
    return optimizer, cosine_schedule(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio), report


def optimizer_step(optimizer, scheduler, clip: float | None) -> float:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def prompt_loader(recipe: dict, batch_size: int):
    """Prompt-only rows (preference.shapes_prompt) for RL: data.kind qa (with data.qa_weights, e.g. only
    count) or grounding; batches are lists of PromptRow."""
    # lazy: train's task modules and posttrain / recipe / schema import each other (issue 19 item 4: one task table)
    from ocellus.train.run import EncodedDataset
    data = recipe.get("data") or {}
    cfg, kind = shapes_config(recipe), data.get("kind", "qa")
    dataset = EncodedDataset(int(data.get("n", 2000)), lambda i: prompt_row(shapes_prompt(cfg, i, kind), i))
    if data.get("source") == "hf":   # TRL prompt-only rows: train/hf_data.py
        dataset = prompt_dataset(recipe)
    return BatchLoader(dataset, batch_size, lambda rows: rows, seed=int(recipe.get("seed", 0)))


def reward_functions(method: dict, processor) -> tuple[list, list[float]]:
    """method.rewards (names from rewards.REWARDS) and/or method.reward_model (a RewardModel dir)."""
    names = list(method.get("rewards") or [])
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ConfigError(f"unknown rewards {unknown}; known: {sorted(REWARDS)}")
    fns = [REWARDS[n] for n in names]
    if method.get("reward_model"):
        # lazy: train's task modules and posttrain / recipe / schema import each other (issue 19 item 4: one task table)
        from ocellus.train.reward_model import RewardModel
        fns.append(RewardModel.from_dir(method["reward_model"]).as_reward_fn(processor))
    if not fns:
        raise ConfigError("method needs rewards (e.g. [count]) or a reward_model dir")
    weights = [float(w) for w in method.get("reward_weights") or [1.0] * len(fns)]
    return fns, weights


def rl_eval(model, processor, recipe: dict) -> dict:
    """The RL runs' held-out score: counting accuracy (data.qa_weights only count) or grounding IoU."""
    data, n = recipe.get("data") or {}, int((recipe.get("eval") or {}).get("n", 500))
    if data.get("kind", "qa") == "grounding":
        return heldout_qa(model, processor, n, kind="grounding")
    types = [t for t, w in (data.get("qa_weights") or {}).items() if w]
    return heldout_qa(model, processor, n, qa_type=types[0] if len(types) == 1 else None)


def rl_fit(loop, recipe: dict, cfg, out: Path, batch_size: int, plot_keys: list[str]) -> list[dict]:
    """max_steps of loop.step(prompt rows) -> posttrain.jsonl, a line every log_every steps, curves."""
    loader, name, history = prompt_loader(recipe, batch_size), recipe.get("name", recipe["task"]), []
    with open(out / "posttrain.jsonl", "w") as log:
        for _ in range(cfg.max_steps):
            record = loop.step(loader.next_batch())
            history.append(record)
            log.write(json.dumps(record) + "\n")
            if record["step"] % cfg.log_every == 0:
                shown = " ".join(f"{k} {record[k]:.4f}" for k in plot_keys if k in record)
                print(f"[{name}] step {record['step']}: {shown}", flush=True)
    plot(history, out, plot_keys, name)
    return history
