"""The Trainer's extension point for objectives that make their own updates (train/step_objective.py), on the
closed-form regression of test_trainer_steps: an objective that makes TWO updates on each batch (as GRPO's
num_iterations = 2 or PPO's ppo_epochs = 2) must get, from Trainer.fit, exactly the AdamW updates written out
by hand: both updates of step s at the schedule's lr for step s (one scheduler step per Trainer step, not per
update), bias correction counting updates, weight decay on the matrix only; update() returns the gradient
norm before clipping; metrics.jsonl carries the objective's own numbers beside the loss; the step number it is
handed counts steps done. Set-ups it cannot run under are ConfigErrors naming the key."""
import json
import math

import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.train.loader import BatchLoader
from ocellus.train.step_objective import StepObjective, StepOutput
from ocellus.train.trainer import TrainConfig, Trainer
from test_trainer_steps import Regression, collate, loss_and_grads, rows, schedule

UPDATES = 2


class TwoUpdates(StepObjective):
    def __init__(self):
        super().__init__()
        self.reg = Regression()

    def train_step(self, batch, step, update) -> StepOutput:
        norms = []
        for _ in range(UPDATES):
            loss = self.reg(**batch).loss
            loss.backward()
            norms.append(update())
        return StepOutput(loss.item(), int(batch["attention_mask"].sum()), {"handed_step": step, "norms": norms})


def test_several_updates_a_step_equal_the_written_out_adamw(tmp_path):
    data = rows()
    lr, wd, (b1, b2), eps, steps = 0.1, 0.5, (0.9, 0.95), 1e-8, 3
    objective = TwoUpdates()
    W = objective.reg.proj.weight.detach().double().clone()                          # [3, 4]
    b = objective.reg.proj.bias.detach().double().clone()                            # [3]
    trainer = Trainer(objective, BatchLoader(data, 4, collate, shuffle=False), TrainConfig(
        max_steps=steps, lr=lr, warmup_steps=1, min_lr_ratio=0.1, weight_decay=wd, betas=(b1, b2),
        clip_grad_norm=None, out_dir=str(tmp_path), progress=False, log_every=1))
    handed_lr = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: handed_lr.append(opt.param_groups[0]["lr"]))
    trainer.fit()

    moments = {"W": (torch.zeros_like(W), torch.zeros_like(W)), "b": (torch.zeros_like(b), torch.zeros_like(b))}
    norms, t = [], 0
    for s in range(steps):
        step_lr = schedule(s, lr, 1, steps, 0.1)
        for _ in range(UPDATES):
            t += 1
            _, dW, db = loss_and_grads(W, b, data[4 * s:4 * s + 4])
            norms.append(math.sqrt((dW ** 2).sum().item() + (db ** 2).sum().item()))
            assert math.isclose(handed_lr[t - 1], step_lr, rel_tol=1e-9)       # both updates at step s's lr
            new = {}
            for name, p, g, decay in (("W", W, dW, wd), ("b", b, db, 0.0)):
                m, v = moments[name]
                m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
                moments[name] = (m, v)
                m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
                new[name] = p * (1 - step_lr * decay) - step_lr * m_hat / (v_hat.sqrt() + eps)
            W, b = new["W"], new["b"]
    assert len(handed_lr) == steps * UPDATES
    torch.testing.assert_close(objective.reg.proj.weight.detach().double(), W, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(objective.reg.proj.bias.detach().double(), b, rtol=1e-5, atol=1e-6)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3] and [r["handed_step"] for r in logged] == [0, 1, 2]
    assert [n for r in logged for n in r["norms"]] == pytest.approx(norms, rel=1e-5)   # before clipping
    assert all(r["tokens_per_s"] > 0 for r in logged)


def test_update_clips_to_the_configured_norm(tmp_path):
    objective = TwoUpdates()
    trainer = Trainer(objective, BatchLoader(rows(), 4, collate, shuffle=False), TrainConfig(
        max_steps=1, lr=0.1, clip_grad_norm=0.01, out_dir=str(tmp_path), progress=False))
    handed = []

    def spy(opt, args, kwargs):
        handed.append(math.sqrt(sum((p.grad.double() ** 2).sum().item() for g in opt.param_groups
                                    for p in g["params"])))
    trainer.optimizer.register_step_pre_hook(spy)
    trainer.train_step()
    assert trainer.step_metrics["norms"][0] > 0.01 and handed[0] == pytest.approx(0.01, rel=1e-4)


def test_set_ups_a_step_objective_cannot_run_under_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.grad_accum must be 1"):
        Trainer(TwoUpdates(), BatchLoader(rows(), 4, collate), TrainConfig(grad_accum=2, out_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="built without optimizers"):
        TwoUpdates().step(collate(rows()[:4]))
