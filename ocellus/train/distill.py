"""Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network") of a
vision-language model into a smaller one, the student initialised from a subset of the teacher's
decoder layers (DistilBERT, Sanh et al. 2019, sec. 3: "taking one layer out of two").

On the trained (assistant) tokens of a batch:
    soft = T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))      (token mean)
    hard = cross-entropy of the student on the labels
    loss = alpha * soft + (1 - alpha) * hard
The T^2 factor keeps the soft term's gradient magnitude independent of T (Hinton et al., sec. 2):
the gradient of KL with temperature T scales as 1/T^2.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ocellus.data.encode import IGNORE_INDEX
from ocellus.errors import ConfigError, InputError
from ocellus.train.dpo import ObjectiveOutput
from ocellus.train.stages import parts_of


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.5                        # weight of the soft (teacher) term; 1 - alpha on the hard labels
    student_layers: tuple[int, ...] = (0, 2)  # teacher decoder layers the student starts from
    teacher: str | None = None                # a teacher checkpoint dir; None: model.from is the teacher

    def __post_init__(self):
        if not self.temperature > 0:
            raise ConfigError(f"distill temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill alpha must be in [0, 1], got {self.alpha}")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 temperature: float = 2.0, alpha: float = 0.5) -> tuple[torch.Tensor, dict]:
    """logits [B, T, V] (position t predicts token t + 1), labels [B, T] (-100: not trained) -> loss."""
    if student_logits.shape != teacher_logits.shape:
        raise InputError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the vocabularies must match")
    keep = labels[:, 1:] != IGNORE_INDEX                                              # [B, T-1]
    if not bool(keep.any()):
        raise InputError("distill_loss: no trained token in the batch (every label is -100)")
    s = student_logits[:, :-1][keep].float()                                          # [N, V]
    t = teacher_logits[:, :-1][keep].float()                                          # [N, V]
    soft = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                    reduction="batchmean") * temperature ** 2
    hard = F.cross_entropy(s, labels[:, 1:][keep])
    return alpha * soft + (1 - alpha) * hard, {"soft": soft.item(), "hard": hard.item()}


def shrink_decoder(model: nn.Module, keep: tuple[int, ...]) -> nn.Module:
    """A copy of a VLM (or decoder) whose decoder keeps only layers `keep` of the original, in order,
    with their weights (embeddings, final norm, head and the vision side copied whole)."""
    student = copy.deepcopy(model)
    lm = student.language_model if hasattr(student, "language_model") else student
    n = len(lm.layers)
    if not keep or len(set(keep)) != len(keep) or any(not 0 <= i < n for i in keep):
        raise ConfigError(f"student_layers must be distinct indices of the teacher's {n} decoder layers, got {keep}")
    lm.layers = nn.ModuleList(lm.layers[i] for i in keep)
    for new_index, layer in enumerate(lm.layers):   # the KV cache is indexed by position in the stack
        layer.self_attn.layer_idx = new_index
    lm.config = replace(lm.config, num_hidden_layers=len(keep))
    if lm is not student:
        student.config = lm.config
    return student


class Distiller(nn.Module):
    """The student under the distillation objective, for the Trainer: forward(**batch).loss. The teacher
    is frozen and kept outside the module tree (not trained, not saved)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: DistillConfig = DistillConfig()):
        super().__init__()
        self.student, self.cfg = student, cfg
        self._teacher = (teacher.requires_grad_(False).eval(),)
        self.history: list[dict] = []

    def parts(self) -> dict[str, nn.Module]:
        return parts_of(self.student)

    def forward(self, labels: torch.Tensor, **batch) -> ObjectiveOutput:
        with torch.no_grad():
            teacher_logits = self._teacher[0](**batch).logits
        loss, metrics = distill_loss(self.student(**batch).logits, teacher_logits, labels, self.cfg.temperature,
                                     self.cfg.alpha)
        if self.training:
            self.history.append(metrics)
        return ObjectiveOutput(loss, metrics)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
