"""Contrastive objectives for dual encoders, and the all-gather that lets negatives span processes.

- `info_nce`: CLIP's symmetric InfoNCE (Radford et al. 2021, Fig. 3; van den Oord et al. 2018):
  cross-entropy over the similarity logits of each image against every text, and of each text
  against every image, the matching pair (the diagonal) as target; the two halves averaged.
  With `ids`, samples sharing an id are all positives (duplicate captions are not negatives of
  each other): the target is uniform over the positives, as LAVIS's retrieval fine-tuning of
  ALBEF/BLIP (`sim_targets = pos_idx / pos_idx.sum(1)`).
- `sigmoid_loss`: SigLIP (Zhai et al. 2023, Algorithm 1): every image-text pair is an independent
  binary problem, label +1 on the diagonal (or for equal ids) and -1 elsewhere;
  loss = -1/N * sum_ij log sigmoid(label_ij * (t * <x_i, y_j> + b)).
- `logit_scale_value`: exp of the learned log-scale, clamped at 100 (CLIP sec. 2.5: "clipped to
  prevent scaling the logits by more than 100"), i.e. the temperature never goes below 0.01.
- `gather_with_grad`: all-gather along dim 0 whose backward sums the incoming gradients over
  processes and returns this process's slice (what torch.distributed.nn.functional.all_gather
  does, written out). Every process computes the same global loss from the gathered features;
  summing makes each local slice's gradient N times d(loss)/d(slice), and DDP's gradient *mean*
  over N processes then gives exactly the gradient of one process holding the whole batch
  (tests/distributed/test_contrastive_gather.py checks loss and gradients).

A batch of one pair has no negative: InfoNCE is then log(1) = 0 whatever the model does, a silent
zero loss. `info_nce` raises InputError for it (and for any row whose ids leave it no negative);
the sigmoid loss is defined for one pair (one positive binary term) and accepts it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ocellus.errors import InputError

MAX_LOGIT_SCALE = 100.0


def logit_scale_value(log_scale: torch.Tensor, max_scale: float | None = MAX_LOGIT_SCALE) -> torch.Tensor:
    """exp(log_scale), at most max_scale (CLIP's clamp; the gradient stops at the cap)."""
    scale = log_scale.exp()
    return scale.clamp(max=max_scale) if max_scale is not None else scale


def _positives(ids: torch.Tensor | None, n: int, device) -> torch.Tensor:
    """[N, N] bool: which (image i, text j) pairs are positives."""
    if ids is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    if ids.shape != (n,):
        raise InputError(f"ids must be one id per pair, shape ({n},); got {tuple(ids.shape)}")
    return ids[:, None] == ids[None, :]                                           # [N, N]


def info_nce(logits_per_image: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over square similarity logits [N images, N texts] (already scaled)."""
    n = _square(logits_per_image, "info_nce")
    if n < 2:
        raise InputError("InfoNCE needs at least 2 image-text pairs in the (global) batch: with one pair there is "
                         "no negative and the loss is identically 0; raise the batch size (or use the sigmoid loss)")
    if ids is None:
        target = torch.arange(n, device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.t(), target)) / 2
    pos = _positives(ids, n, logits_per_image.device)
    lonely = (pos.sum(1) == n).nonzero().flatten().tolist()
    if lonely:
        raise InputError(f"pairs {lonely[:10]} share their id with every other pair in the batch: no negatives "
                         "left for InfoNCE; the batch needs at least two distinct ids")
    target = pos.float() / pos.sum(1, keepdim=True)                               # [N, N] rows sum to 1
    i2t = -(F.log_softmax(logits_per_image, dim=1) * target).sum(1).mean()
    t2i = -(F.log_softmax(logits_per_image.t(), dim=1) * target.t()).sum(1).mean()  # pos is symmetric
    return (i2t + t2i) / 2


def sigmoid_loss(logits_per_image: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over square logits [N, N] (already scaled and biased)."""
    n = _square(logits_per_image, "sigmoid_loss")
    labels = 2 * _positives(ids, n, logits_per_image.device).to(logits_per_image.dtype) - 1   # +1 / -1
    return -F.logsigmoid(labels * logits_per_image).sum() / n


def _square(logits: torch.Tensor, name: str) -> int:
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise InputError(f"{name} takes square logits [N images, N texts] of paired data; got {tuple(logits.shape)}")
    return logits.shape[0]


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
    """All-gather for tensors that need no gradient (ids, MoCo's keys)."""
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


__all__ = ["MAX_LOGIT_SCALE", "logit_scale_value", "info_nce", "sigmoid_loss", "gather_with_grad", "gather_no_grad",
           "contrastive_loss", "world"]
