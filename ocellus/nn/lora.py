"""LoRA (Hu et al. 2021): a frozen linear W plus a trainable low-rank update (alpha / r) * B A.

B starts at zero, so an adapted model first computes exactly what the base model computes.
Adapters are placed by full module path (e.g. `language_model.layers.3.self_attn.q_proj`),
matched with regexes that the caller scopes to one part of the model: a bare leaf name like
`q_proj` would also hit the vision tower's attention (a known bug elsewhere).

`merge_lora` folds every adapter back into a plain nn.Linear for export; `merged_state_dict`
gives the folded tensors without touching the live model (what `ocellus.save` writes).
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, positive_int


class LoRALinear(nn.Module):
    """Wraps an nn.Linear, keeping its `weight`/`bias` names so checkpoints still map."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        positive_int(rank, "LoRA rank")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))     # as nn.Linear initialises its weight
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_B @ self.lora_A) * self.scaling


def inject_lora(model: nn.Module, targets: list[str], rank: int = 8, alpha: float = 16.0,
                dropout: float = 0.0) -> list[str]:
    """Replace every nn.Linear whose full path matches one of `targets` (regexes, fully
    matched) with a LoRALinear. Returns the adapted paths; none matched is a ConfigError."""
    patterns = [re.compile(t) for t in targets]
    hits = [name for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and any(p.fullmatch(name) for p in patterns)]
    if not hits:
        raise ConfigError(f"LoRA targets {targets} match no nn.Linear module path")
    for name in hits:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, LoRALinear(getattr(owner, leaf), rank, alpha, dropout))
    return hits


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """state_dict with each adapter folded into its weight (W + scaling * B A) and the lora_* entries removed.
    state: the model's tensors by name when they are not its own parameters (a sharded model's gathered
    full tensors); default model.state_dict()."""
    state = dict(model.state_dict() if state is None else state)
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALinear):
            prefix = f"{name}." if name else ""
            a, b = state.pop(prefix + "lora_A"), state.pop(prefix + "lora_B")
            state[prefix + "weight"] = (state[prefix + "weight"] + (b @ a) * mod.scaling).detach()
    return state


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """In place: every LoRALinear becomes an nn.Linear holding W + scaling * B A."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoRALinear):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                            device=mod.weight.device, dtype=mod.weight.dtype)
            lin.weight.copy_(mod.merged_weight())
            if mod.bias is not None:
                lin.bias.copy_(mod.bias)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, lin)
    return model
