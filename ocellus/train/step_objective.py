"""The Trainer's extension point for objectives whose step is more than one forward and one backward.

An RL step (GRPO, PPO) draws its own batch from the policy (rollouts), scores it, and makes several optimizer
updates on it (GRPO's num_iterations, PPO's ppo_epochs). Such an objective subclasses StepObjective; the
Trainer keeps everything else, as for SFT: the stage, AdamW over the param groups, the cosine schedule (one
scheduler step per Trainer step, however many updates the step made), clipping, metrics.jsonl, atomic
checkpoints and resume:

    Trainer.train_step -> objective.train_step(batch, step, update) -> StepOutput(loss, tokens, metrics)
        batch    what the Trainer's loader gives (RL: a list of prompt rows)
        step     steps done before this one; restored on resume, so what derives from it (a rollout's
                 sampling seed) continues where an uninterrupted run would be
        update() clip the gradients (train.clip_grad_norm), step the optimizer, zero the gradients
                 -> the gradient norm before clipping

`step(batch)` runs one step outside the Trainer with optimizers given at construction (the step tests,
which compare one real step against the update written out by hand with plain SGD).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ocellus.errors import ConfigError


@dataclass
class StepOutput:
    loss: float                      # the step's (last update's) loss, what metrics.jsonl logs as "loss"
    tokens: int                      # tokens the step trained on (RL: completion tokens), for tokens/s
    metrics: dict                    # the objective's own numbers (reward, kl, ...), logged beside the loss


def apply_gradients(optimizer: torch.optim.Optimizer, clip: float | None) -> torch.Tensor:
    """Clip the gradients of the optimizer's parameters to norm `clip` (None or 0: measure only), step the
    optimizer, zero the gradients -> the norm before clipping (a tensor: reading it waits for the device,
    so only RL steps, which log it, do). The Trainer's one update, SFT and RL alike."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class StepObjective(nn.Module, abc.ABC):
    """Base of the objectives that run their own step under the Trainer (see the module docstring).
    Submodules are what the Trainer trains, saves and resumes; a frozen model the step reads but never
    trains (a reference policy) is kept outside the module tree by the subclass."""

    def __init__(self, optimizers=(), schedulers=(), clip_grad_norm: float | None = None):
        super().__init__()
        self._alone = (list(optimizers), list(schedulers), clip_grad_norm)   # for step() only
        self.steps_alone = 0

    @abc.abstractmethod
    def train_step(self, batch, step: int, update: Callable[[], float]) -> StepOutput:
        """One training step on `batch`: any number of backward passes, each followed by update()."""

    def step(self, batch) -> dict:
        """One step outside the Trainer: the optimizers and schedulers given at construction, each clipped
        separately. -> {"step", "loss", **metrics}."""
        optimizers, schedulers, clip = self._alone
        if not optimizers:
            raise ConfigError(f"{type(self).__name__} was built without optimizers: run it under the Trainer "
                              "(ocellus train) or pass optimizers and schedulers")

        def update() -> float:
            return math.hypot(*(float(apply_gradients(opt, clip)) for opt in optimizers))
        out = self.train_step(batch, self.steps_alone, update)
        for sched in schedulers:
            sched.step()
        self.steps_alone += 1
        return {"step": self.steps_alone, "loss": out.loss, **out.metrics}
