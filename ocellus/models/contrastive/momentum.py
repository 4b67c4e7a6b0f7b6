"""Momentum encoders and feature queues: the machinery MoCo, ALBEF and BLIP share (written once here).

MoCo (He et al. 2020, Eq. 2 and Algorithm 1), ALBEF (Li et al. 2021, "Align before Fuse: Vision and
Language Representation Learning with Momentum Distillation", sec. 3.2-3.3) and BLIP (Li et al. 2022,
sec. 3.2) keep

  - momentum copies of the encoders and projections, moved by an exponential moving average after
    every step:  theta_m <- m * theta_m + (1 - m) * theta          (`momentum_update`; ALBEF m = 0.995)
  - FIFO queues of the K most recent momentum features (and sample ids), so the contrastive loss sees
    K + B - 1 negatives instead of B - 1 (`fifo_write`: MoCo's key queue and ALBEF/BLIP's `FeatureQueue`)
  - (ALBEF, BLIP) momentum distillation, whose weight alpha ramps up linearly from 0 over the first
    steps (`distill_alpha`; ALBEF: the first epoch). The distilled ITC itself is losses.queue_itc.

Reference implementation: salesforce/ALBEF models/model_pretrain.py (`_momentum_update`,
`_dequeue_and_enqueue`) and salesforce/BLIP models/blip_retrieval.py (ids in the queue: `idx_queue`).
Differences: the features are all-gathered with losses.gather_no_grad before they are queued (as
theirs `concat_all_gather`); `alpha` comes from a step counter kept in the model (`distill_alpha`), not
from the data loader; unwritten queue slots are not negatives (theirs start as random unit vectors:
see FeatureQueue).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ocellus.errors import ConfigError, positive_int
from ocellus.models.contrastive.losses import gather_no_grad

NO_ID = -100   # the id of a queue slot that holds no sample yet (never equal to a real id)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy that starts equal to `module` and moves only by `momentum_update`."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def momentum_update(pairs: list[tuple[nn.Module, nn.Module]], m: float) -> None:
    """theta_m <- m * theta_m + (1 - m) * theta for every (online, momentum) module pair."""
    if not 0.0 <= m <= 1.0:
        raise ConfigError(f"momentum must be in [0, 1], got {m}")
    for online, twin in pairs:
        for p, pm in zip(online.parameters(), twin.parameters()):
            pm.mul_(m).add_(p.detach(), alpha=1.0 - m)


@torch.no_grad()
def fifo_write(queues: tuple[torch.Tensor, ...], rows: tuple[torch.Tensor, ...], ptr: torch.Tensor) -> int:
    """The one FIFO step of every feature queue: overwrite the oldest n slots of each queue (features
    [E, K] take rows [n, E], ids [K] take [n]) at the pointer ptr (a 0-d long buffer) and advance it.
    -> n. The queue size must be a multiple of n, else the pointer would wrap inside a batch."""
    K, n = queues[0].shape[-1], rows[0].shape[0]
    if K % n:
        raise ConfigError(f"queue_size {K} is not a multiple of the global batch {n}: the pointer would wrap "
                          "inside a batch; choose a batch size that divides queue_size")
    p = int(ptr)
    for queue, new in zip(queues, rows):
        queue[..., p:p + n] = new.t()                                                     # [E, n] or [n]
    ptr.fill_((p + n) % K)
    return n


class FeatureQueue(nn.Module):
    """FIFO queues of the K most recent normalised image and text features [E, K] and their sample
    ids [K]. Only written slots are negatives: `filled` counts them (ALBEF starts from K random unit
    vectors instead; with a small embedding, trained from scratch, those random vectors outscore every
    real pair and ITC learns nothing, so here an empty queue is simply empty)."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.size = positive_int(size, "queue_size")
        self.register_buffer("image_queue", torch.zeros(dim, size))                       # [E, K]
        self.register_buffer("text_queue", torch.zeros(dim, size))                        # [E, K]
        self.register_buffer("idx_queue", torch.full((size,), NO_ID, dtype=torch.long))   # [K]
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The written slots: image [E, k], text [E, k], ids [k] (the queue fills from slot 0)."""
        k = int(self.filled)
        return self.image_queue[:, :k].clone(), self.text_queue[:, :k].clone(), self.idx_queue[:k].clone()

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, ids: torch.Tensor) -> None:
        """Overwrite the oldest n slots with this step's features [n, E] of every process."""
        image_feat, text_feat, ids = gather_no_grad(image_feat), gather_no_grad(text_feat), gather_no_grad(ids)
        n = fifo_write((self.image_queue, self.text_queue, self.idx_queue), (image_feat, text_feat, ids), self.ptr)
        self.filled.fill_(min(self.size, int(self.filled) + n))


def distill_alpha(alpha: float, step: int, warmup_steps: int) -> float:
    """ALBEF's ramp: alpha * min(1, step / warmup_steps) (warmup 0: alpha from the start)."""
    return alpha if warmup_steps <= 0 else alpha * min(1.0, step / warmup_steps)


__all__ = ["momentum_copy", "momentum_update", "fifo_write", "FeatureQueue", "distill_alpha", "NO_ID"]
