"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your Language
Model is Secretly a Reward Model", eq. 7), with the IPO (Azar et al. 2023, eq. 17) and hinge (SLiC,
Zhao et al. 2023) variants; loss formulas as TRL's DPOTrainer.dpo_loss writes them.

With h = [log pi(y_w|x) - log pi(y_l|x)] - [log pi_ref(y_w|x) - log pi_ref(y_l|x)]:
    sigmoid  -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)     (eps: label smoothing, cDPO)
    ipo      (h - 1 / (2 beta))^2          with per-token AVERAGE log-probs (IPO's length normalisation)
    hinge    max(0, 1 - beta h)
The implied reward of a completion is r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) (eq. 5); the logged
rewards/chosen, rewards/rejected, margins and accuracies (chosen reward > rejected reward) are those.

The reference is a frozen copy of the policy taken before training (kept outside the module tree, so
it is neither trained nor saved), or reference log-probs precomputed into the batch (`ref_logps`),
in which case no reference model is held in memory at all.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.train.rollout import token_logprobs
from ocellus.train.stages import parts_of

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0     # cDPO: the share of pairs assumed to be mislabelled (sigmoid only)

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"dpo loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if not self.beta > 0:
            raise ConfigError(f"dpo beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"dpo label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError("dpo label_smoothing applies to the sigmoid loss only")


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence log-probs [B] of the policy and the reference -> (per-pair losses [B], chosen rewards [B],
    rejected rewards [B]); the rewards are detached beta * log(pi / pi_ref)."""
    shapes = {t.shape for t in (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)}
    if len(shapes) != 1:
        raise InputError(f"dpo_loss: the four log-prob tensors must have one shape, got {sorted(map(tuple, shapes))}")
    h = (chosen_logps - rejected_logps) - (ref_chosen_logps - ref_rejected_logps)     # [B]
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ConfigError(f"dpo loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-token log-probs [B, C] -> per-sequence [B]: the sum, or the mean over real tokens (IPO)."""
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    metrics: dict


class DPO(nn.Module):
    """The policy under the DPO objective, shaped for the Trainer: forward(**batch).loss.

    batch: a pair batch from preference.collate_pairs, 2B rows = B chosen then B rejected, plus
    optionally ref_logps [2B] (precomputed reference sequence log-probs, e.g. by `reference_logps`)."""

    def __init__(self, policy: nn.Module, reference: nn.Module | None, cfg: DPOConfig = DPOConfig()):
        super().__init__()
        self.policy, self.cfg = policy, cfg
        if reference is not None:
            reference.requires_grad_(False).eval()
        self._reference = (reference,)        # a tuple: not a submodule, so not trained, counted or saved
        self.history: list[dict] = []

    @classmethod
    def with_frozen_copy(cls, policy: nn.Module, cfg: DPOConfig = DPOConfig()) -> "DPO":
        return cls(policy, copy.deepcopy(policy), cfg)

    @property
    def reference(self):
        return self._reference[0]

    def parts(self) -> dict[str, nn.Module]:
        return parts_of(self.policy)

    def sequence_logps(self, model, batch) -> torch.Tensor:
        return sequence_logps(token_logprobs(model, batch), batch["completion_mask"],
                              average=self.cfg.loss_type == "ipo")

    def forward(self, ref_logps: torch.Tensor | None = None, **batch) -> ObjectiveOutput:
        B2 = batch["input_ids"].shape[0]
        if B2 % 2:
            raise InputError(f"a DPO batch holds chosen then rejected rows, an even number; got {B2}")
        if ref_logps is None:
            if self.reference is None:
                raise ConfigError("DPO needs a reference model or precomputed ref_logps in the batch")
            with torch.no_grad():
                ref_logps = self.sequence_logps(self.reference, batch)
        logps = self.sequence_logps(self.policy, batch)                               # [2B]
        B = B2 // 2
        losses, chosen_r, rejected_r = dpo_loss(logps[:B], logps[B:], ref_logps[:B], ref_logps[B:],
                                                self.cfg.beta, self.cfg.loss_type, self.cfg.label_smoothing)
        metrics = {"rewards/chosen": chosen_r.mean().item(), "rewards/rejected": rejected_r.mean().item(),
                   "rewards/margins": (chosen_r - rejected_r).mean().item(),
                   "rewards/accuracies": (chosen_r > rejected_r).float().mean().item(),
                   "logps/chosen": logps[:B].mean().item(), "logps/rejected": logps[B:].mean().item()}
        if self.training:
            self.history.append(metrics)
        return ObjectiveOutput(losses.mean(), metrics)


@torch.no_grad()
def reference_logps(reference: nn.Module, batch: dict, loss_type: str = "sigmoid") -> torch.Tensor:
    """Reference sequence log-probs of a pair batch, to precompute once (then pass as batch["ref_logps"])."""
    return sequence_logps(token_logprobs(reference.eval(), batch), batch["completion_mask"],
                          average=loss_type == "ipo")
