"""`ocellus train recipes/posttrain/<method>.yaml`: what the post-training tasks (train/tasks/rm.py, dpo.py,
grpo.py, ppo.py, distill.py; run.run_method runs each) share: the start model, data, evaluation, reports.

    task: rm | dpo | grpo | ppo | distill
    model: {from: DIR | default}            the policy (or reward-model backbone / teacher) to start from;
                                            `default` is the embedded tiny LLaVA (ocellus.default_model_dir())
    data: {source: shapes, n, seed, image_size, qa_weights, kind}   preference pairs (rm, dpo), prompts
                                            (grpo, ppo: kind qa | grounding) or QA conversations (distill)
    method: {...}                            the method's own options (DPOConfig, GRPOConfig, PPOConfig,
                                            DistillConfig fields; rewards: [count, iou, ...]; reward_model: DIR)
    train: {...}                             TrainConfig (max_steps, lr, batch_size, stage, out_dir, ...)
    eval: {n: 500}                           held-out evaluation before and after (scenes of the eval seed)

Each run writes out_dir/metrics.jsonl (the Trainer's: every method runs under it), out_dir/posttrain.jsonl
(the method's own per-step numbers: rewards, KL, margins, accuracies), out_dir/eval.json (before/after
tables), PNG curves and the trained model (out_dir/model, HF format).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ocellus.errors import ConfigError
from ocellus.eval.harness import EVAL_SEED, predict, score
from ocellus.eval.metrics import format_table
from ocellus.hub.checkpoint import load_model
from ocellus.hub.resolve import default_model_dir
from ocellus.data.processor import load_processor
from ocellus.data.shapes import sample_at, ShapesConfig
from ocellus.train.hf_data import preference_dataset, prompt_dataset, Streamed
from ocellus.train.loader import BatchLoader
from ocellus.train.preference import preference_pair, prompt_row, shapes_preference, shapes_prompt
from ocellus.train.recipe_data import EncodedDataset, shapes_config as data_shapes_config
from ocellus.train.reward_model import RewardModel
from ocellus.train.rewards import iou_reward, REWARDS
from ocellus.train.stages import parts_of
from ocellus.train.trainer import Trainer
from ocellus.train.vlm_export import export_vlm   # grpo / ppo export their policy through this name
from ocellus.viz.curves import plot_curve

log = logging.getLogger(__name__)


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


def shapes_config(recipe: dict, seed: int | None = None):
    data = dict(recipe.get("data") or {})
    if seed is not None:
        data["seed"] = seed
    return data_shapes_config(data)


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
    log.info(f"[{name}] held-out before:\n{format_table(before, score_name='accuracy', percent=True)}")
    log.info(f"[{name}] held-out after:\n{format_table(after, score_name='accuracy', percent=True)}")
    return result


def plot(history: list[dict], out: Path, keys: list[str], name: str) -> None:
    for key in keys:
        if any(key in h for h in history):
            plot_curve(history, out / f"{key.replace('/', '_')}.png", key=key, title=name)


def export_policy(recipe: dict, model, tok, path: Path) -> Path:
    """A post-training task's export: the trained VLM at its vision tower's image size (run.run_method
    writes the recipe's model card beside it)."""
    return export_vlm(model, tok, int(model.vision_tower.config.image_size), path)


# ---- shared by the methods that run under the Trainer (rm, dpo, distill) ----------------------------

def pair_dataset(recipe: dict, n: int | None = None, seed: int | None = None):
    """Preference pairs from shapes QA ground truth (preference.shapes_preference), made on access."""
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
    batch_size = int((recipe.get("train") or {}).get("batch_size", 8))
    loader = dataset.loader(batch_size, collate) if isinstance(dataset, Streamed) else \
        BatchLoader(dataset, batch_size, collate, seed=int(recipe.get("seed", 0)))
    trainer = Trainer(objective, loader, cfg)
    log.info(f"[{recipe.get('name')}] trainable parameters per part:\n{trainer.report}")
    trainer.fit()
    history = [{"step": i // cfg.grad_accum + 1, **m} for i, m in enumerate(objective.history)]
    losses = {h["step"]: h["loss"] for h in trainer.history}
    for h in history:
        h["loss"] = losses.get(h["step"])
    (out / "posttrain.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    plot(history, out, ["loss", *plot_keys], recipe.get("name", ""))
    return history


# ---- shared by the RL methods (grpo, ppo): objectives that run their own step under the Trainer -------

def prompt_loader(recipe: dict, batch_size: int):
    """Prompt-only rows (preference.shapes_prompt) for RL: data.kind qa (with data.qa_weights, e.g. only
    count) or grounding; batches are lists of PromptRow."""
    data = recipe.get("data") or {}
    cfg, kind = shapes_config(recipe), data.get("kind", "qa")
    dataset = EncodedDataset(int(data.get("n", 2000)), lambda i: prompt_row(shapes_prompt(cfg, i, kind), i))
    if data.get("source") == "hf":   # TRL prompt-only rows: train/hf_data.py
        dataset = prompt_dataset(recipe)
        if isinstance(dataset, Streamed):   # data.streaming: read batch by batch, resumable
            return dataset.loader(batch_size, lambda rows: rows)
    return BatchLoader(dataset, batch_size, lambda rows: rows, seed=int(recipe.get("seed", 0)))


def reward_functions(method: dict, processor) -> tuple[list, list[float]]:
    """method.rewards (names from rewards.REWARDS) and/or method.reward_model (a RewardModel dir)."""
    names = list(method.get("rewards") or [])
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ConfigError(f"unknown rewards {unknown}; known: {sorted(REWARDS)}")
    fns = [REWARDS[n] for n in names]
    if method.get("reward_model"):
        fns.append(RewardModel.from_dir(method["reward_model"]).as_reward_fn(processor))
    if not fns:
        raise ConfigError("method needs rewards (e.g. [count]) or a reward_model dir")
    weights = [float(w) for w in method.get("reward_weights") or [1.0] * len(fns)]
    if len(weights) != len(fns):   # refused at load, not at the first step's scoring
        raise ConfigError(f"method.reward_weights has {len(weights)} weights for {len(fns)} reward functions "
                          f"(method.rewards {names}{' + reward_model' if method.get('reward_model') else ''})")
    return fns, weights


def rl_eval(model, processor, recipe: dict) -> dict:
    """The RL runs' held-out score: counting accuracy (data.qa_weights only count) or grounding IoU."""
    data, n = recipe.get("data") or {}, int((recipe.get("eval") or {}).get("n", 500))
    if data.get("kind", "qa") == "grounding":
        return heldout_qa(model, processor, n, kind="grounding")
    types = [t for t, w in (data.get("qa_weights") or {}).items() if w]
    return heldout_qa(model, processor, n, qa_type=types[0] if len(types) == 1 else None)


def rl_fit(objective, recipe: dict, cfg, out: Path, batch_size: int, plot_keys: list[str]) -> list[dict]:
    """An RL objective (a step_objective.StepObjective: GRPO, PPO) under the Trainer, batch_size prompt rows a
    step: the Trainer's optimizer and schedule, metrics.jsonl (the objective's numbers beside the loss) every
    log_every steps, checkpoints every save_every, train.resume. Then posttrain.jsonl (every step's record,
    those before a resume included: they travel in the checkpoint's history) and curves."""
    name = recipe.get("name", recipe["task"])

    def show(record: dict) -> None:
        shown = " ".join(f"{k} {record[k]:.4f}" for k in plot_keys if isinstance(record.get(k), float))
        log.info(f"[{name}] step {record['step']}: loss {record['loss']:.4f} {shown}")
    trainer = Trainer(objective, prompt_loader(recipe, batch_size), cfg, on_log=show)
    log.info(f"[{name}] trainable parameters per part:\n{trainer.report}")
    history = trainer.fit()
    (out / "posttrain.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    plot(history, out, plot_keys, name)
    return history
