"""The image-text objectives, each written once: ITC, ITM, ITG, and the all-gather that lets negatives span processes.

Used by CLIP / SigLIP (clip.py), MoCo (moco.py: the gather), ALBEF and BLIP (albef.py, blip.py), BLIP-2
stage 1 (models/families/blip2/stage1.py) and the SEED tokenizer (models/unified/seed.py).

ITC, image-text contrastive:
- `info_nce`: CLIP's symmetric InfoNCE (Radford et al. 2021, Fig. 3; van den Oord et al. 2018):
  cross-entropy over the similarity logits of each image against every text, and of each text
  against every image, the matching pair (the diagonal) as target; the two halves averaged.
  With `ids`, samples sharing an id are all positives (duplicate captions are not negatives of
  each other): the target is uniform over the positives, as LAVIS's retrieval fine-tuning of
  ALBEF/BLIP (`sim_targets = pos_idx / pos_idx.sum(1)`). `label_smoothing` as BLIP-2 (LAVIS: 0.1).
- `sigmoid_loss`: SigLIP (Zhai et al. 2023, Algorithm 1): every image-text pair is an independent
  binary problem, label +1 on the diagonal (or for equal ids) and -1 elsewhere;
  loss = -1/N * sum_ij log sigmoid(label_ij * (t * <x_i, y_j> + b)).
- `queue_itc`: ALBEF / BLIP's ITC against a queue of momentum features with momentum distillation
  (ALBEF Eq. 6-7; the queue and the EMA live in momentum.py): the targets are a mix of the positives
  (`positive_targets`, the same rule as info_nce's, over the batch and the queue) and the momentum
  model's own softmax, y = (1 - alpha) * y_true + alpha * softmax(s_m / tau), L = -sum(y * log_softmax(s / tau)).
- `logit_scale_value`: exp of the learned log-scale, clamped at 100 (CLIP sec. 2.5: "clipped to
  prevent scaling the logits by more than 100"), i.e. the temperature never goes below 0.01.
- `contrastive_loss`: a dual encoder's step: gather, scale (+ bias), InfoNCE or sigmoid.

ITM, image-text matching (ALBEF sec. 3.2, BLIP, BLIP-2):
- `hard_negatives`: for each image a negative text and for each text a negative image, drawn with
  probability softmax(ITC similarity) among the batch's non-positives.
- `itm_loss`: cross-entropy of a match / no-match head on B positives and the 2B hard-negative pairs.

ITG / LM: `itg_loss`, the next-token cross-entropy of an image-grounded text decoder (BLIP, BLIP-2 ITG).

Across processes: `gather_with_grad` is an all-gather along dim 0 whose backward sums the incoming
gradients over processes and returns this process's slice (what torch.distributed.nn.functional.all_gather
does, written out). Every process computes the same global loss from the gathered features; summing
makes each local slice's gradient N times d(loss)/d(slice), and DDP's gradient *mean* over N processes
then gives exactly the gradient of one process holding the whole batch
(tests/distributed/test_contrastive_gather.py checks loss and gradients). `gather_no_grad` for ids,
momentum features and MoCo's keys.

A batch of one pair has no negative: InfoNCE is then log(1) = 0 whatever the model does, a silent
zero loss. `info_nce` raises InputError for it (and for any row whose ids leave it no negative);
the sigmoid loss is defined for one pair (one positive binary term) and accepts it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ocellus.errors import InputError

MAX_LOGIT_SCALE = 100.0


def logit_scale_value(log_scale: torch.Tensor, max_scale: float | None = MAX_LOGIT_SCALE) -> torch.Tensor:
    """exp(log_scale), at most max_scale (CLIP's clamp; the gradient stops at the cap)."""
    scale = log_scale.exp()
    return scale.clamp(max=max_scale) if max_scale is not None else scale


# ---- ITC ------------------------------------------------------------------------------------------
def _positives(ids: torch.Tensor | None, n: int, device, extra_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[n, n + K] bool: which (image i, text j) pairs are positives; columns are the batch's n pairs, then
    K more (a queue) holding extra_ids. Without ids only the diagonal (never an extra column)."""
    K = 0 if extra_ids is None else extra_ids.shape[0]
    if ids is None:
        pos = torch.zeros(n, n + K, dtype=torch.bool, device=device)
        pos[:, :n] = torch.eye(n, dtype=torch.bool, device=device)
        return pos
    if ids.shape != (n,):
        raise InputError(f"ids must be one id per pair, shape ({n},); got {tuple(ids.shape)}")
    cols = ids if extra_ids is None else torch.cat([ids, extra_ids])                    # [n + K]
    return ids[:, None] == cols[None, :]                                                 # [n, n + K]


def positive_targets(ids: torch.Tensor | None, n: int, device=None,
                     extra_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Ground-truth ITC targets [n, n + K]: one-hot on the diagonal, or (ids given) uniform over every
    column, batch or queue, holding the same id (duplicate captions are positives, not negatives)."""
    pos = _positives(ids, n, device if extra_ids is None else extra_ids.device, extra_ids)
    target = pos.float() / pos.sum(1, keepdim=True)
    return target


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_j targets_j log softmax(logits)_j per row -> [rows] (targets are distributions)."""
    return -(F.log_softmax(logits.float(), dim=-1) * targets).sum(dim=-1)


def symmetric_soft_ce(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, target_i2t: torch.Tensor,
                      target_t2i: torch.Tensor) -> torch.Tensor:
    """ITC's two halves averaged: image->text and text->image soft cross-entropies, each a mean over rows."""
    return (soft_cross_entropy(sim_i2t, target_i2t).mean() + soft_cross_entropy(sim_t2i, target_t2i).mean()) / 2


def info_nce(logits_per_image: torch.Tensor, ids: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE over square similarity logits [N images, N texts] (already scaled)."""
    n = _square(logits_per_image, "info_nce")
    if n < 2:
        raise InputError("InfoNCE needs at least 2 image-text pairs in the (global) batch: with one pair there is "
                         "no negative and the loss is identically 0; raise the batch size (or use the sigmoid loss)")
    if ids is None:
        target = torch.arange(n, device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, target, label_smoothing=label_smoothing)
                + F.cross_entropy(logits_per_image.t(), target, label_smoothing=label_smoothing)) / 2
    target = positive_targets(ids, n, logits_per_image.device)                      # [N, N] rows sum to 1
    lonely = (target.gt(0).sum(1) == n).nonzero().flatten().tolist()
    if lonely:
        raise InputError(f"pairs {lonely[:10]} share their id with every other pair in the batch: no negatives "
                         "left for InfoNCE; the batch needs at least two distinct ids")
    if label_smoothing:
        target = (1 - label_smoothing) * target + label_smoothing / n
    return symmetric_soft_ce(logits_per_image, logits_per_image.t(), target, target.t())   # pos is symmetric


def sigmoid_loss(logits_per_image: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over square logits [N, N] (already scaled and biased)."""
    n = _square(logits_per_image, "sigmoid_loss")
    labels = 2 * _positives(ids, n, logits_per_image.device).to(logits_per_image.dtype) - 1   # +1 / -1
    return -F.logsigmoid(labels * logits_per_image).sum() / n


def _square(logits: torch.Tensor, name: str) -> int:
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise InputError(f"{name} takes square logits [N images, N texts] of paired data; got {tuple(logits.shape)}")
    return logits.shape[0]


def queue_itc(image_feat: torch.Tensor, text_feat: torch.Tensor, image_feat_m: torch.Tensor,
              text_feat_m: torch.Tensor, queue, temp: torch.Tensor, alpha: float,
              ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITC with momentum queues and momentum distillation. Features are L2-normalised [n, E]
    (online: with gradient; momentum: without); queue: a momentum.FeatureQueue. Returns (loss, sim_i2t,
    sim_t2i), the similarities [n, n + k] / temp over [batch ; the k written queue slots], whose batch
    block ITM samples hard negatives from."""
    n = image_feat.shape[0]
    if ids is not None and ids.shape != (n,):
        raise InputError(f"ids must hold one id per pair ({n}), got shape {tuple(ids.shape)}")
    image_q, text_q, ids_q = queue.entries()
    if n + ids_q.shape[0] < 2:
        raise InputError("ITC needs at least one negative: a batch of one pair and an empty queue")
    with torch.no_grad():
        image_all = torch.cat([image_feat_m.t(), image_q], dim=1)                         # [E, n + k]
        text_all = torch.cat([text_feat_m.t(), text_q], dim=1)                            # [E, n + k]
        target = positive_targets(ids, n, extra_ids=ids_q)                                # [n, n + k]
        sim_i2t_m = image_feat_m @ text_all / temp
        sim_t2i_m = text_feat_m @ image_all / temp
        i2t_target = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * target
        t2i_target = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * target
    sim_i2t = image_feat @ text_all / temp                                                 # [n, n + k]
    sim_t2i = text_feat @ image_all / temp                                                 # [n, n + k]
    return symmetric_soft_ce(sim_i2t, sim_t2i, i2t_target, t2i_target), sim_i2t, sim_t2i


# ---- ITM ------------------------------------------------------------------------------------------
def hard_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, ids: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image a negative text and for each text a negative image, drawn with probability
    softmax(similarity) over the batch's non-positives (ALBEF; BLIP / LAVIS add 1e-4 so no weight is 0
    before masking, kept here). sim_*: [B, B] batch similarities (BLIP-2: sim and sim.t()); ids [B]:
    equal ids are positives (None: only the diagonal).
    -> (negative text index per image [B], negative image index per text [B])."""
    B = sim_i2t.shape[0]
    if sim_i2t.shape != (B, B) or sim_t2i.shape != (B, B):
        raise InputError(f"hard_negatives takes square batch similarities, got {tuple(sim_i2t.shape)} and "
                         f"{tuple(sim_t2i.shape)}")
    with torch.no_grad():
        same = _positives(ids, B, sim_i2t.device)
        lonely = same.all(dim=1).nonzero().flatten().tolist()
        if lonely:
            raise InputError(f"pairs {lonely[:10]} have no negative in the batch (batch of one, or every pair shares "
                             "their id): ITM needs at least 2 pairs with distinct ids per batch")
        w_i2t = (F.softmax(sim_i2t.float(), dim=1) + 1e-4).masked_fill(same, 0)               # [B, B]
        w_t2i = (F.softmax(sim_t2i.float(), dim=1) + 1e-4).masked_fill(same, 0)
        neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)                 # [B]
        neg_image = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)                # [B]
    return neg_text, neg_image


def itm_loss(score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], text: torch.Tensor,
             text_mask: torch.Tensor, image: torch.Tensor, neg_text: torch.Tensor,
             neg_image: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the match head on B positives, B (negative image, text) and B (image, negative
    text) pairs. score(texts [3B, T, ...], masks [3B, T], images [3B, S, Dv]) -> match logits [3B, 2]
    (class 1 = match); `text` is whatever score takes as its text input (ALBEF: text-encoder states;
    BLIP, BLIP-2: ids)."""
    B = text.shape[0]
    texts = torch.cat([text, text, text[neg_text]])                                          # [3B, T, ...]
    masks = torch.cat([text_mask, text_mask, text_mask[neg_text]])
    images = torch.cat([image, image[neg_image], image])                                     # [3B, S, Dv]
    logits = score(texts, masks, images)                                                     # [3B, 2]
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)
    return F.cross_entropy(logits.float(), labels)


# ---- ITG / LM -------------------------------------------------------------------------------------
def itg_loss(logits: torch.Tensor, dec_ids: torch.Tensor, text_mask: torch.Tensor,
             label_smoothing: float = 0.1) -> torch.Tensor:
    """logits [B, T, V] of the text positions; token t predicts token t+1 of dec_ids; padding not trained."""
    labels = dec_ids[:, 1:].masked_fill(text_mask[:, 1:] == 0, -100)                  # [B, T-1]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                           label_smoothing=label_smoothing)


# ---- across processes ------------------------------------------------------------------------------
def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts)                                                    # [N * size, ...]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)                         # sum: every process's loss reads this slice
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[n, ...] on each process -> [n * world, ...] in rank order; gradients reach the local slice.
    Every process must pass the same n (equal per-process batches)."""
    _, size = world()
    if size == 1:
        return x
    _check_equal_sizes(x.shape[0])
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather for tensors that need no gradient (ids, momentum features, MoCo's keys)."""
    _, size = world()
    if size == 1:
        return x
    _check_equal_sizes(x.shape[0])
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _check_equal_sizes(n: int) -> None:
    sizes = torch.tensor([n])
    gathered = [torch.zeros_like(sizes) for _ in range(world()[1])]
    dist.all_gather(gathered, sizes)
    got = [int(s) for s in gathered]
    if len(set(got)) > 1:
        raise InputError(f"processes hold different batch sizes {got}; the contrastive all-gather needs equal "
                         "per-process batches (drop the last partial batch)")


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, log_scale: torch.Tensor,
                     bias: torch.Tensor | None = None, kind: str = "infonce", ids: torch.Tensor | None = None,
                     max_scale: float | None = MAX_LOGIT_SCALE) -> torch.Tensor:
    """The loss of a dual encoder's step: L2-normalised embeddings [n, E] of this process, gathered
    over all processes (negatives span the global batch), scaled (+ bias), then InfoNCE or sigmoid."""
    if kind not in ("infonce", "sigmoid"):
        raise InputError(f"contrastive loss kind {kind!r}; use 'infonce' (CLIP) or 'sigmoid' (SigLIP)")
    image_all, text_all = gather_with_grad(image_embeds), gather_with_grad(text_embeds)   # [N, E]
    ids_all = gather_no_grad(ids) if ids is not None else None
    logits = logit_scale_value(log_scale, max_scale) * image_all @ text_all.t()            # [N, N]
    if bias is not None:
        logits = logits + bias
    return info_nce(logits, ids_all) if kind == "infonce" else sigmoid_loss(logits, ids_all)


__all__ = ["MAX_LOGIT_SCALE", "logit_scale_value", "positive_targets", "soft_cross_entropy", "symmetric_soft_ce",
           "info_nce", "sigmoid_loss", "queue_itc", "hard_negatives", "itm_loss", "itg_loss", "gather_with_grad",
           "gather_no_grad", "contrastive_loss", "world"]
