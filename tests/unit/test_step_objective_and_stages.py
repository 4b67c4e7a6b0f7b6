"""A step objective run alone (train/step_objective.py: the step count it passes, the update norm over every
optimizer) and stages naming parts (train/stages.py): properties only the right wiring has."""
from __future__ import annotations

import math

import torch
from torch import nn

from ocellus.train.step_objective import StepObjective, StepOutput


class _Recorder(StepObjective):
    """Two parameters, each under its own optimizer; the step's gradient is fixed, so the norms are known."""

    def __init__(self):
        a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
        super().__init__(optimizers=[torch.optim.SGD([a], lr=0.0), torch.optim.SGD([b], lr=0.0)])
        self.a, self.b = a, b
        self.seen, self.norms = [], []

    def train_step(self, batch, step, update):
        self.seen.append(step)
        loss = (self.a * torch.tensor([3.0, 0.0])).sum() + (self.b * torch.tensor([4.0])).sum()
        loss.backward()
        self.norms.append(update())
        return StepOutput(loss.item(), 1, {})


def test_step_alone_passes_the_steps_done_and_the_norm_over_every_optimizer():
    obj = _Recorder()
    obj.step(None)
    obj.step(None)
    assert obj.seen == [0, 1]                       # a rollout's seed derives from it: it must advance
    assert obj.norms == [5.0, 5.0]                  # hypot(3, 4): both optimizers' gradients, not the first's
    assert math.isclose(obj.norms[0], math.hypot(3.0, 4.0))


def test_a_stage_naming_a_part_the_model_lacks_is_a_config_error():
    import pytest
    from ocellus.errors import ConfigError
    from ocellus.train.stages import apply_stage
    with pytest.raises(ConfigError, match="vision"):
        apply_stage(nn.Linear(2, 2), {"llm": "full", "vision": "full"})   # a bare decoder has only "llm"
