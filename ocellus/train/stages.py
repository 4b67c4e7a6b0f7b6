"""Training stages are data: which part of the model trains, how, and at what learning rate.

    {"vision": "frozen", "connector": "full", "llm": "frozen"}                 # LLaVA stage 1 (alignment)
    {"vision": "frozen", "connector": "full", "llm": {"mode": "lora", "rank": 8,
     "targets": ["layers\\.\\d+\\.self_attn\\.(q|v)_proj"], "lr": 2e-4}}        # instruction tuning with LoRA

A part is a named submodule (`parts_of(model)`): for a VLM vision / connector / llm, for a bare
decoder llm. `apply_stage` sets requires_grad, injects LoRA (targets are paths *inside* the
part, so they can never reach another part) and returns a per-part report of trainable counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ocellus.errors import ConfigError
from ocellus.nn.lora import inject_lora

MODES = ("frozen", "full", "lora")


@dataclass(frozen=True)
class PartSpec:
    mode: str = "frozen"
    lr: float | None = None               # None: the recipe's base learning rate
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = (r".*(q_proj|k_proj|v_proj|o_proj)",)

    @classmethod
    def parse(cls, part: str, spec) -> "PartSpec":
        if isinstance(spec, str):
            spec = {"mode": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"stage part {part!r}: expected a mode string or a mapping, got {spec!r}")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"stage part {part!r}: unknown keys {sorted(unknown)}")
        spec = dict(spec)
        if "targets" in spec:
            spec["targets"] = tuple(spec["targets"])
        out = cls(**spec)
        if out.mode not in MODES:
            raise ConfigError(f"stage part {part!r}: mode must be one of {MODES}, got {out.mode!r}")
        return out


@dataclass(frozen=True)
class Stage:
    parts: dict[str, PartSpec] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: dict) -> "Stage":
        return cls({name: PartSpec.parse(name, s) for name, s in (spec or {}).items()})


def parts_of(model: nn.Module) -> dict[str, nn.Module]:
    """The named parts a stage can address: the model's own `parts()` when it defines one (e.g.
    Flamingo's connector = perceiver + gated cross-attention blocks, which live beside the decoder)."""
    if callable(getattr(model, "parts", None)):
        return dict(model.parts())
    if hasattr(model, "vision_tower") and hasattr(model, "language_model"):
        parts = {"vision": model.vision_tower, "llm": model.language_model}
        if hasattr(model, "multi_modal_projector"):
            parts["connector"] = model.multi_modal_projector
        return parts
    if hasattr(model, "encoder") and hasattr(model, "classifier"):   # ViTClassifier: the encoder trains alone
        return {"vision": model}
    return {"llm": model}


@dataclass
class StageReport:
    counts: dict[str, tuple[int, int]]      # part -> (trainable, total)
    lora_paths: dict[str, list[str]]

    def __str__(self) -> str:
        rows = [f"{p:>10}: {t:>12,} / {n:>12,} trainable" for p, (t, n) in self.counts.items()]
        return "\n".join(rows)


def apply_stage(model: nn.Module, stage: Stage | dict) -> StageReport:
    stage = stage if isinstance(stage, Stage) else Stage.parse(stage)
    parts = parts_of(model)
    unknown = set(stage.parts) - set(parts)
    if unknown:
        raise ConfigError(f"stage names parts {sorted(unknown)} this model does not have; it has {sorted(parts)}")
    lora_paths: dict[str, list[str]] = {}
    for name, module in parts.items():
        spec = stage.parts.get(name, PartSpec())            # unnamed parts stay frozen
        module.requires_grad_(spec.mode == "full")
        if spec.mode == "lora":
            lora_paths[name] = inject_lora(module, list(spec.targets), spec.rank, spec.alpha, spec.dropout)
    counts = {name: (sum(p.numel() for p in m.parameters() if p.requires_grad), sum(p.numel() for p in m.parameters()))
              for name, m in parts.items()}
    return StageReport(counts, lora_paths)


def param_groups(model: nn.Module, stage: Stage | dict, base_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: per part (its own lr), split into decayed matrices and undecayed
    norms/biases/1-d tensors. Frozen parameters are not in any group."""
    stage = stage if isinstance(stage, Stage) else Stage.parse(stage)
    groups = []
    for name, module in parts_of(model).items():
        spec = stage.parts.get(name, PartSpec())
        lr = spec.lr if spec.lr is not None else base_lr
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.dim() >= 2 and "norm" not in n]
        no_decay = [p for n, p in params if not (p.dim() >= 2 and "norm" not in n)]
        for ps, wd, kind in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
            if ps:
                groups.append({"params": ps, "lr": lr, "weight_decay": wd, "name": f"{name}.{kind}"})
    if not groups:
        raise ConfigError("the stage leaves nothing to train: every part is frozen")
    return groups
