"""Momentum encoders, feature queues and momentum distillation: the machinery ALBEF and BLIP share.

ALBEF (Li et al. 2021, "Align before Fuse: Vision and Language Representation Learning with
Momentum Distillation", sec. 3.2-3.3) and BLIP (Li et al. 2022, sec. 3.2) keep, as MoCo does,

  - momentum copies of the unimodal encoders and projections, moved by an exponential moving
    average after every step:  theta_m <- m * theta_m + (1 - m) * theta          (m = 0.995)
  - FIFO queues of the K most recent momentum image and text features (and sample ids), so the
    image-text contrastive loss (ITC) sees K + B - 1 negatives instead of B - 1:
        s(I, T) = g_v(v_cls)^T g'_w(w'_cls) / tau   over [this batch's momentum texts ; queue]
  - momentum distillation: the targets are a mix of the one-hot (or, with ids, uniform over
    samples that share an id) ground truth and the momentum model's own softmax:
        y = (1 - alpha) * y_true + alpha * softmax(s_m / tau)
        L = -sum(y * log_softmax(s / tau))                                      (ALBEF Eq. 6-7)
    alpha ramps up linearly from 0 over the first steps (ALBEF: the first epoch).

Reference implementation: salesforce/ALBEF models/model_pretrain.py (`_momentum_update`,
`_dequeue_and_enqueue`, the ITA block) and salesforce/BLIP models/blip_retrieval.py (ids in the
queue: `idx_queue`, `pos_idx / pos_idx.sum(1)`). Differences: the features are all-gathered with
ocellus/train/contrastive_losses.py before they are queued (as theirs `concat_all_gather`);
`alpha` comes from a step counter kept in the model (`distill_alpha`), not from the data loader;
unwritten queue slots are not negatives (theirs start as random unit vectors: see FeatureQueue).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_int
from ocellus.train.contrastive_losses import gather_no_grad

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
        n = image_feat.shape[0]
        if self.size % n:
            raise ConfigError(f"queue_size {self.size} is not a multiple of the global batch {n}: the pointer would "
                              "wrap inside a batch; choose a batch size that divides queue_size")
        p = int(self.ptr)
        self.image_queue[:, p:p + n] = image_feat.t()                                     # [E, n]
        self.text_queue[:, p:p + n] = text_feat.t()
        self.idx_queue[p:p + n] = ids
        self.ptr.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_j targets_j log softmax(logits)_j per row -> [rows] (targets are distributions)."""
    return -(F.log_softmax(logits.float(), dim=-1) * targets).sum(dim=-1)


def distill_alpha(alpha: float, step: int, warmup_steps: int) -> float:
    """ALBEF's ramp: alpha * min(1, step / warmup_steps) (warmup 0: alpha from the start)."""
    return alpha if warmup_steps <= 0 else alpha * min(1.0, step / warmup_steps)


def itc_targets(ids: torch.Tensor | None, queue_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Ground-truth ITC targets [n, n + K]: one-hot on the diagonal, or (ids given) uniform over every
    column, batch or queue, holding the same id (duplicate captions are positives, not negatives)."""
    K, device = queue_ids.shape[0], queue_ids.device
    if ids is None:
        target = torch.zeros(n, n + K, device=device)
        target[:, :n] = torch.eye(n, device=device)
        return target
    ids_all = torch.cat([ids, queue_ids])                                                 # [n + K]
    pos = (ids[:, None] == ids_all[None, :]).float()                                      # [n, n + K]
    return pos / pos.sum(dim=1, keepdim=True)


def queue_itc(image_feat: torch.Tensor, text_feat: torch.Tensor, image_feat_m: torch.Tensor,
              text_feat_m: torch.Tensor, queue: FeatureQueue, temp: torch.Tensor, alpha: float,
              ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITC with momentum queues and momentum distillation. Features are L2-normalised [n, E]
    (online: with gradient; momentum: without). Returns (loss, sim_i2t, sim_t2i), the similarities
    [n, n + k] / temp over [batch ; the k written queue slots], whose batch block ITM samples hard
    negatives from."""
    n = image_feat.shape[0]
    if ids is not None and ids.shape != (n,):
        raise InputError(f"ids must hold one id per pair ({n}), got shape {tuple(ids.shape)}")
    image_q, text_q, ids_q = queue.entries()
    if n + ids_q.shape[0] < 2:
        raise InputError("ITC needs at least one negative: a batch of one pair and an empty queue")
    with torch.no_grad():
        image_all = torch.cat([image_feat_m.t(), image_q], dim=1)                         # [E, n + k]
        text_all = torch.cat([text_feat_m.t(), text_q], dim=1)                            # [E, n + k]
        target = itc_targets(ids, ids_q, n)                                               # [n, n + k]
        sim_i2t_m = image_feat_m @ text_all / temp
        sim_t2i_m = text_feat_m @ image_all / temp
        i2t_target = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * target
        t2i_target = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * target
    sim_i2t = image_feat @ text_all / temp                                                 # [n, n + k]
    sim_t2i = text_feat @ image_all / temp                                                 # [n, n + k]
    loss = (soft_cross_entropy(sim_i2t, i2t_target).mean() + soft_cross_entropy(sim_t2i, t2i_target).mean()) / 2
    return loss, sim_i2t, sim_t2i


__all__ = ["momentum_copy", "momentum_update", "FeatureQueue", "soft_cross_entropy", "distill_alpha", "itc_targets",
           "queue_itc", "NO_ID"]
