"""One real Trainer step against the same step written out by hand (train/trainer.py, train/loader.py).

The model is a least-squares regression, loss = sum_t m_t ||W x_t + b - y_t||^2 / sum_t m_t, whose
gradient has a closed form (dW = 2/N sum_t m_t r_t x_t^T, db = 2/N sum_t m_t r_t, r = W x + b - y), so
every number the Trainer produces (the loss it reports, the gradient it hands the optimizer, the
learning rate, the AdamW update) is recomputed here from the formulas, not by calling the code:

- AdamW (Loshchilov & Hutter 2019): p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), decay only
  on matrices (W), never on biases (b);
- linear warmup then cosine decay to lr * min_lr_ratio, step s (0-based) at lr * (s + 1) / warmup;
- gradient accumulation: k micro-batches, each loss divided by k;
- clipping: the gradient handed to the optimizer has global norm max_norm when it was larger.
"""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ocellus.train.loader import BatchLoader
from ocellus.train.trainer import TrainConfig, Trainer

T, DIN, DOUT = 5, 4, 3


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(DIN, DOUT)          # proj.weight [3, 4] decays, proj.bias [3] does not

    def forward(self, x, y, attention_mask):
        per_token = ((self.proj(x) - y) ** 2).sum(-1)                               # [B, T]
        m = attention_mask.float()
        return SimpleNamespace(loss=(per_token * m).sum() / m.sum())


def rows(n=24, seed=1, masks=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        mask = torch.ones(T, dtype=torch.long) if masks is None else masks[i]
        out.append({"x": torch.randn(T, DIN, generator=g), "y": torch.randn(T, DOUT, generator=g) * 2,
                    "attention_mask": mask})
    return out


def collate(batch):
    return {k: torch.stack([r[k] for r in batch]) for k in batch[0]}


def loss_and_grads(W, b, batch):
    """The closed form, float64. batch: rows -> (loss, dW [3, 4], db [3])."""
    x = torch.stack([r["x"] for r in batch]).double()                                # [B, T, 4]
    y = torch.stack([r["y"] for r in batch]).double()                                # [B, T, 3]
    m = torch.stack([r["attention_mask"] for r in batch]).double()                   # [B, T]
    r = x @ W.T + b - y                                                              # [B, T, 3]
    n = m.sum()
    loss = ((r ** 2).sum(-1) * m).sum() / n
    dW = 2 * torch.einsum("bt,bto,bti->oi", m, r, x) / n
    db = 2 * torch.einsum("bt,bto->o", m, r) / n
    return loss, dW, db


def schedule(step, lr, warmup, total, min_ratio):
    """Linear warmup (step s of the run uses (s+1)/warmup of lr), then cosine down to min_ratio * lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * progress)) / 2)


def make_trainer(tmp_path, data, batch_size, **cfg):
    cfg = {**dict(max_steps=6, lr=0.1, warmup_steps=2, min_lr_ratio=0.1, clip_grad_norm=None, out_dir=str(tmp_path),
                  progress=False, betas=(0.9, 0.95)), **cfg}
    trainer = Trainer(Regression(), BatchLoader(data, batch_size, collate, shuffle=False), TrainConfig(**cfg))
    seen = []                 # what the optimizer is handed at each step: (lr, dW, db)

    def spy(optimizer, args, kwargs):
        w, b = trainer.model.proj.weight, trainer.model.proj.bias
        seen.append((optimizer.param_groups[0]["lr"], w.grad.double().clone(), b.grad.double().clone()))
    trainer.optimizer.register_step_pre_hook(spy)
    return trainer, seen


def test_adamw_steps_equal_the_written_out_update(tmp_path):
    """Three steps (two in warmup, one in the cosine): loss, lr, gradient and the AdamW update with
    decoupled weight decay on W only, bias-corrected moments."""
    data = rows()
    lr, wd, (b1, b2), eps = 0.1, 0.5, (0.9, 0.95), 1e-8
    trainer, seen = make_trainer(tmp_path, data, 4, weight_decay=wd)
    W = trainer.model.proj.weight.detach().double().clone()                          # [3, 4]
    b = trainer.model.proj.bias.detach().double().clone()                            # [3]
    moments = {"W": (torch.zeros_like(W), torch.zeros_like(W)), "b": (torch.zeros_like(b), torch.zeros_like(b))}
    for s in range(3):
        loss, dW, db = loss_and_grads(W, b, data[4 * s:4 * s + 4])
        got_loss, tokens = trainer.train_step()
        step_lr = schedule(s, lr, 2, 6, 0.1)
        assert math.isclose(got_loss, loss.item(), rel_tol=1e-5)
        assert tokens == 4 * T
        assert math.isclose(seen[s][0], step_lr, rel_tol=1e-9)
        torch.testing.assert_close(seen[s][1], dW, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(seen[s][2], db, rtol=1e-5, atol=1e-6)
        new = {}
        for name, p, g, decay in (("W", W, dW, wd), ("b", b, db, 0.0)):
            m, v = moments[name]
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            moments[name] = (m, v)
            m_hat, v_hat = m / (1 - b1 ** (s + 1)), v / (1 - b2 ** (s + 1))
            new[name] = p * (1 - step_lr * decay) - step_lr * m_hat / (v_hat.sqrt() + eps)
        W, b = new["W"], new["b"]
        torch.testing.assert_close(trainer.model.proj.weight.detach().double(), W, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(trainer.model.proj.bias.detach().double(), b, rtol=1e-5, atol=1e-6)


def test_learning_rate_follows_warmup_then_cosine(tmp_path):
    """lr at every step of a 10-step run with 3 warmup steps: lr/3, 2lr/3, lr, then the cosine; the
    scheduler's lr after the last step is the one the next step would use."""
    trainer, seen = make_trainer(tmp_path, rows(40), 4, max_steps=10, warmup_steps=3, min_lr_ratio=0.2)
    for _ in range(10):
        trainer.train_step()
    want = [schedule(s, 0.1, 3, 10, 0.2) for s in range(10)]
    assert want[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1]) and want[3] == pytest.approx(0.1)
    assert [lr for lr, _, _ in seen] == pytest.approx(want, rel=1e-9)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.1 * 0.2)       # the cosine's floor


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """grad_accum=3 micro-batches of 2 rows (same token count each) hand the optimizer the gradient of
    the loss over all 6 rows, and report that loss."""
    data = rows()
    trainer, seen = make_trainer(tmp_path, data, 2, grad_accum=3)
    W, b = trainer.model.proj.weight.detach().double(), trainer.model.proj.bias.detach().double()
    loss, dW, db = loss_and_grads(W, b, data[:6])
    got_loss, tokens = trainer.train_step()
    assert math.isclose(got_loss, loss.item(), rel_tol=1e-5) and tokens == 6 * T
    torch.testing.assert_close(seen[0][1], dW, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[0][2], db, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_averages_micro_batch_losses(tmp_path):
    """With unequal token counts the Trainer's documented rule is the mean of the k micro-batch losses
    (each already a per-token mean), i.e. loss / grad_accum per micro-batch, not one token mean."""
    masks = [torch.tensor([1, 1, 1, 1, 1]) if i % 4 < 2 else torch.tensor([0, 0, 0, 1, 1]) for i in range(24)]
    data = rows(masks=masks)
    trainer, seen = make_trainer(tmp_path, data, 2, grad_accum=2)
    W, b = trainer.model.proj.weight.detach().double(), trainer.model.proj.bias.detach().double()
    parts = [loss_and_grads(W, b, data[i:i + 2]) for i in (0, 2)]
    got_loss, tokens = trainer.train_step()
    assert tokens == 2 * 5 + 2 * 2
    assert math.isclose(got_loss, (parts[0][0] + parts[1][0]).item() / 2, rel_tol=1e-5)
    torch.testing.assert_close(seen[0][1], (parts[0][1] + parts[1][1]) / 2, rtol=1e-5, atol=1e-6)


def test_clipping_rescales_the_gradient_to_max_norm(tmp_path):
    """clip_grad_norm_: g <- g * max_norm / ||g|| over all trained tensors together, when ||g|| > max_norm."""
    data = rows()
    trainer, seen = make_trainer(tmp_path, data, 4, clip_grad_norm=0.05)
    W, b = trainer.model.proj.weight.detach().double(), trainer.model.proj.bias.detach().double()
    _, dW, db = loss_and_grads(W, b, data[:4])
    norm = torch.cat([dW.flatten(), db]).norm()
    assert norm > 1.0                                        # far above max_norm: clipping must act
    trainer.train_step()
    torch.testing.assert_close(seen[0][1], dW * 0.05 / norm, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(seen[0][2], db * 0.05 / norm, rtol=1e-5, atol=1e-7)


# -- the loader: the batch order written out, and resume -------------------------------------------
def test_loader_order_is_a_seeded_permutation_per_epoch_and_ranks_interleave():
    """Epoch e's order is randperm(n) under seed * 100003 + e; global batch i of rank r is the slice
    [(i * world + r) * bs, ... + bs); a new epoch starts once no full global batch is left."""
    data = list(range(10))
    bs, world = 2, 2
    loaders = [BatchLoader(data, bs, list, seed=7, rank=r, world_size=world) for r in range(world)]
    for epoch in range(3):
        order = torch.randperm(10, generator=torch.Generator().manual_seed(7 * 100_003 + epoch)).tolist()
        for i in range(10 // (bs * world)):                                          # 2 global batches
            for r, loader in enumerate(loaders):
                start = (i * world + r) * bs
                assert loader.next_batch() == order[start:start + bs], (epoch, i, r)


@pytest.mark.parametrize("taken", [1, 4, 5, 9])
def test_loader_resumes_where_it_stopped(taken):
    """A loader restored from state_dict() after `taken` batches (mid-epoch, and exactly at an epoch's
    end) gives the batches an uninterrupted one gives next."""
    data = list(range(11))                                  # 5 batches of 2 per epoch, one sample left over
    straight = BatchLoader(data, 2, list, seed=3)
    first = BatchLoader(data, 2, list, seed=3)
    for _ in range(taken):
        straight.next_batch()
        first.next_batch()
    resumed = BatchLoader(data, 2, list, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.next_batch() for _ in range(7)] == [straight.next_batch() for _ in range(7)]
