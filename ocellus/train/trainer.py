"""The training loop: one readable function's worth of steps.

    for step in 1..max_steps:
        for micro in 1..grad_accum: loss = model(**batch).loss / grad_accum; loss.backward()
        clip grads; optimizer.step(); scheduler.step(); zero grads
        log (JSONL + progress), checkpoint every save_every, stop on a non-finite loss

AdamW with per-part parameter groups (stages.param_groups), cosine decay after a linear warmup,
train.precision=bf16 autocast (fp32 weights, AdamW), optional gradient checkpointing. Progress goes to stderr
(viz/progress.py): a bar on a terminal, else a plain line every progress_every steps (default: log_every) or
progress_seconds seconds with step, loss, lr, steps/s and ETA. A non-finite loss
stops the run with the step number before anything is written, so the last checkpoint stays
the last good one.

An objective whose step is more than forward + backward (GRPO, PPO: rollouts, then several updates)
subclasses step_objective.StepObjective: the Trainer calls its train_step(batch, step, update) instead and
logs the numbers it returns beside the loss; schedule, clipping, checkpoints and resume stay the same.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ocellus.errors import ConfigError, OcellusError, positive_int
from ocellus.train.loader import BatchLoader
from ocellus.train.stages import Stage, apply_stage, param_groups, parts_of
from ocellus.train.distributed import DistInfo, barrier, wrap, full_model_state, full_optimizer_state, load_full_state
from ocellus.train.state import latest_checkpoint, read_checkpoint, save_checkpoint
from ocellus.train.step_objective import StepObjective, apply_gradients
from ocellus.viz.progress import Progress

log = logging.getLogger(__name__)


class TrainingError(OcellusError):
    """The run cannot go on (e.g. the loss became NaN/inf)."""


@dataclass
class TrainConfig:
    max_steps: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1           # cosine decays to lr * min_lr_ratio
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    precision: str = "fp32"             # bf16: forward + loss under torch.autocast(bf16); weights, gradients and
                                        # AdamW state stay fp32 (`autocast` below; fp16 is refused there)
    gradient_checkpointing: bool = False
    log_every: int = 10
    save_every: int = 0                 # 0: only at the end
    eval_every: int = 0                 # N: the runner's held-out evaluation every N steps and at the end
                                        # (metrics.jsonl {"step", "eval", "train_s"}: accuracy vs step / seconds)
    save_trainable_only: bool = True    # checkpoints leave out the parameters the stage froze (checkpointed_state)
    out_dir: str = "runs/train"
    resume: bool = False
    progress: bool = True               # stderr: a bar on a terminal, plain lines elsewhere (CI, | tee, nohup)
    progress_every: int | None = None   # not a terminal: a line every N steps (None: log_every) ...
    progress_seconds: float = 30.0      # ... or every T seconds, whichever comes first
    stage: dict = field(default_factory=dict)


PRECISIONS = ("fp32", "bf16", "fp16")   # train.precision (the schema's choices; fp16 is named to be refused)


def autocast(precision: str, device_type: str) -> torch.autocast:
    """The context of a step's forward + loss for train.precision. bf16: torch.autocast runs matmuls and
    convolutions in bf16 (reductions, norms, softmax and the loss stay fp32, per autocast's op lists) while the
    parameters, their gradients and the optimizer stay fp32, so no update is lost to bf16 rounding. fp32: a
    disabled autocast. fp16 is refused: its 5 exponent bits underflow small gradients without loss scaling
    (GradScaler), which this loop does not do; bf16 has fp32's range and needs none."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16":
        raise ConfigError(f"train.precision fp16 (model on {device_type}) is not supported: fp16 autocast needs "
                          "loss scaling (GradScaler), which the Trainer does not do; use train.precision=bf16 "
                          "(fp32's exponent range, no scaling needed)")
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def cosine_schedule(optimizer, warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _count_tokens(batch: dict) -> int:
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    ids = batch.get("input_ids")
    return ids.numel() if ids is not None else 0


def make_adamw(groups: list[dict], cfg) -> torch.optim.AdamW:
    """AdamW over per-part param groups, with the fused kernel (one op over every tensor) where all
    parameters allow it: plain float tensors on CPU or CUDA, not FSDP's DTensors. On CPU PyTorch's
    default is a per-parameter loop, ~2.5x slower for a tiny model's many small tensors (the tiny
    LLaVA's 113: 8 ms a step vs 3 ms)."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(type(p) is nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                 for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused or None)


def checkpointed_state(model: nn.Module, state: dict[str, torch.Tensor], trainable_only: bool) -> dict:
    """The model tensors a checkpoint keeps (what resume needs to continue exactly). trainable_only leaves out
    only the parameters a stage froze inside its parts (parts_of), which never change. Everything else moves
    during training and stays: the trained parameters, parameters outside every part (the momentum encoders
    of MoCo / ALBEF / BLIP, moved by EMA) and every buffer (feature queues and their pointers, step counters)."""
    if not trainable_only:
        return state
    frozen = {id(p) for part in parts_of(model).values() for p in part.parameters() if not p.requires_grad}
    fixed = {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in frozen}
    return {k: v for k, v in state.items() if k not in fixed}


class Trainer:
    def __init__(self, model: nn.Module, loader: BatchLoader, cfg: TrainConfig,
                 on_log: Callable[[dict], None] | None = None, dist_info: DistInfo | None = None,
                 evaluate: Callable[[nn.Module], dict] | None = None):
        self.loader, self.cfg, self.on_log, self.evaluate = loader, cfg, on_log, evaluate
        self.dist = dist_info or DistInfo()
        self.is_main = self.dist.is_main
        positive_int(cfg.progress_every, "train.progress_every", optional=True)
        positive_int(cfg.progress_seconds, "train.progress_seconds", number=True)
        if isinstance(model, StepObjective) and (cfg.grad_accum != 1 or self.dist.world_size > 1):
            raise ConfigError(f"{type(model).__name__} runs its own updates on one process: train.grad_accum must "
                              f"be 1 (got {cfg.grad_accum}) and no torchrun ({self.dist.world_size} processes); "
                              "train.batch_size sets the prompts per step")
        autocast(cfg.precision, _device_type(model))   # a precision the device cannot train in: refused up front
        # the stage first (requires_grad, LoRA), then wrapping (DDP/FSDP), then the optimizer,
        # which must see the wrapped (under FSDP: sharded) parameters. No stage: all parts train.
        self.stage = Stage.parse(cfg.stage or {part: "full" for part in parts_of(model)})
        self.report = apply_stage(model, self.stage)
        for m in model.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = cfg.gradient_checkpointing
        self.model = wrap(model, self.dist)
        groups = param_groups(self._inner(), self.stage, cfg.lr, cfg.weight_decay)
        self.optimizer = make_adamw(groups, cfg)
        self.scheduler = cosine_schedule(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.step = 0
        self.out = Path(cfg.out_dir)
        self.history: list[dict] = []
        self.step_metrics: dict = {}       # a StepObjective's own numbers of the last step (logged with its loss)

    def _inner(self) -> nn.Module:
        return getattr(self.model, "module", self.model)   # unwrap DDP

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Gather full tensors (a collective under FSDP: every rank calls this), write on rank 0."""
        inner = self._inner()
        model_state = checkpointed_state(inner, full_model_state(inner), self.cfg.save_trainable_only)
        optim_state = full_optimizer_state(inner, self.optimizer)
        path = None
        if self.is_main:
            path = save_checkpoint(self.out / "checkpoints", self.step, model_state, optim_state,
                                   self.scheduler.state_dict(), {"data": self.loader.state_dict(),
                                                                 "history": self.history})
        barrier()
        return path

    def maybe_resume(self) -> bool:
        path = latest_checkpoint(self.out / "checkpoints") if self.cfg.resume else None
        if path is None:
            return False
        tensors, optim_state, state = read_checkpoint(path)
        load_full_state(self._inner(), self.optimizer, tensors, optim_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.loader.load_state_dict(state["data"])
        self.history = state.get("history", [])
        metrics = self.out / "metrics.jsonl"
        if self.is_main and metrics.exists():  # drop what a crashed run logged after this checkpoint
            kept = [line for line in metrics.read_text().splitlines() if _logged_step(line) <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))
        return True

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, int]:
        cfg, model = self.cfg, self.model
        model.train()
        if isinstance(self._inner(), StepObjective):
            return self._objective_step()
        total, tokens = 0.0, 0
        for _ in range(cfg.grad_accum):
            batch = self.loader.next_batch()
            tokens += _count_tokens(batch)
            with autocast(cfg.precision, _device_type(model)):
                loss = model(**batch).loss / cfg.grad_accum
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at step {self.step + 1}: stopping; the last "
                                    f"checkpoint in {self.out / 'checkpoints'} is the last good state")
            loss.backward()
            total += loss.item()
        if self.dist.world_size > 1:  # report the global-batch loss, as one process would
            t = torch.tensor([total, float(tokens)], dtype=torch.float64)
            torch.distributed.all_reduce(t)
            total, tokens = t[0].item() / self.dist.world_size, int(t[1].item())
        apply_gradients(self.optimizer, cfg.clip_grad_norm)
        self.scheduler.step()
        self.step += 1
        return total, tokens

    def _objective_step(self) -> tuple[float, int]:
        """A StepObjective's step: its own rollouts and updates (each update clips and steps the optimizer),
        then one scheduler step, as one SFT step makes."""
        cfg = self.cfg
        with autocast(cfg.precision, _device_type(self.model)):
            out = self._inner().train_step(self.loader.next_batch(), self.step,
                                           lambda: float(apply_gradients(self.optimizer, cfg.clip_grad_norm)))
        self.scheduler.step()
        self.step += 1
        self.step_metrics = out.metrics
        return out.loss, out.tokens

    def fit(self) -> list[dict]:
        cfg = self.cfg
        resumed = self.maybe_resume()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not resumed:
                self._start_clean()
        bar = (Progress(cfg.max_steps, initial=self.step, desc="train", every=cfg.progress_every or cfg.log_every,
                        seconds=cfg.progress_seconds) if cfg.progress and self.is_main else None)
        t0, tok_window = time.perf_counter(), 0
        train_s = 0.0   # seconds spent in training steps (evaluation excluded): the x of accuracy-vs-seconds
        while self.step < cfg.max_steps:
            started = time.perf_counter()
            loss, tokens = self.train_step()
            train_s += time.perf_counter() - started
            tok_window += tokens
            record = {"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0], **self.step_metrics}
            self.history.append({"step": self.step, "loss": loss, **self.step_metrics})
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                dt = time.perf_counter() - t0
                record["tokens_per_s"] = tok_window / dt if dt > 0 else 0.0
                t0, tok_window = time.perf_counter(), 0
                self._log(record)
            if bar is not None:
                bar.update(1, loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
            if self.evaluate is not None and cfg.eval_every and (self.step % cfg.eval_every == 0
                                                                 or self.step == cfg.max_steps):
                self._evaluate(train_s)
                t0 = time.perf_counter()   # the next tokens/s window leaves the evaluation out
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        if not (cfg.save_every and self.step % cfg.save_every == 0):
            self.save()
        return self.history

    def _evaluate(self, train_s: float) -> None:
        """The runner's evaluation of the model as it is now (rank 0; the others wait), logged as its own line."""
        if self.is_main:
            inner = self._inner()
            inner.eval()
            with torch.no_grad():
                result = self.evaluate(inner)
            inner.train()
            self._log({"step": self.step, "eval": result, "train_s": round(train_s, 3)})
        barrier()

    def _start_clean(self) -> None:
        """A fresh run into an out_dir that holds an earlier run's log and checkpoints replaces them: its
        steps would otherwise be appended after the old ones (duplicate step numbers) and `latest` would
        name the old run until the first save."""
        old = [p for p in (self.out / "metrics.jsonl", self.out / "checkpoints") if p.exists()]
        if not old:
            return
        log.warning(f"{self.out} holds an earlier run: starting clean (its {', '.join(p.name for p in old)} "
                    "replaced); train.resume=true continues a run instead")
        for p in old:
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_log:
            self.on_log(record)

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def _logged_step(line: str) -> float:
    """The step a metrics.jsonl line records; a line a crash tore (or anything unreadable) counts as after
    every checkpoint, so resume drops it instead of failing on it."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, TypeError, KeyError):
        return math.inf
    return step if isinstance(step, int) and not isinstance(step, bool) else math.inf


def _device_type(model: nn.Module) -> str:
    p = next(model.parameters(), None)
    return p.device.type if p is not None else "cpu"
