"""Training checkpoints: tensors in safetensors, everything else in JSON, written atomically.

    out/checkpoints/step-000120/
        model.safetensors       trainable parameters (or all), our parameter names
        optimizer.safetensors   optimizer tensors: "state.<param index>.<name>"
        rng.safetensors         torch's CPU RNG state (and CUDA's when present)
        state.json              step, optimizer param_groups, scheduler, data position, metrics
    out/checkpoints/latest      the name of the newest complete checkpoint

A checkpoint is written into `step-N.tmp/` and renamed when complete, then `latest` is replaced
by rename: a crash at any moment leaves the previous checkpoint intact and `latest` pointing to it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ocellus.errors import CheckpointError


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer tensors -> "state/<param key>/<name>" (param keys are indices, or parameter
    names under FSDP, which contain dots); scalars and param_groups -> JSON."""
    tensors, scalars = {}, {}
    for key, st in opt_state["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{key}/{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{key}/{name}"] = v
    keys_are_int = all(isinstance(k, int) for k in opt_state["state"])
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars, "int_keys": keys_are_int}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    cast = int if meta.get("int_keys", True) else str
    state: dict = {}
    for flat, t in tensors.items():
        key, name = flat[len("state/"):].rsplit("/", 1)
        state.setdefault(cast(key), {})[name] = t
    for flat, v in meta["scalars"].items():
        key, name = flat.rsplit("/", 1)
        state.setdefault(cast(key), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: Path, step: int, model_state: dict[str, torch.Tensor], optim_state: dict,
                    scheduler_state: dict | None, extra: dict) -> Path:
    """Write one checkpoint (call on one process; gather sharded state first)."""
    root = Path(root)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optim_state)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler_state, **extra}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / "latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = Path(root) / "latest"
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / "state.json").exists():
        raise CheckpointError(f"{pointer} names {path.name}, which is incomplete or missing")
    return path


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """-> (model tensors, optimizer state dict, state.json); restores the RNG state."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise CheckpointError(f"cannot read training checkpoint {path}: {e}") from e
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return tensors, _unflatten_optimizer(opt_tensors, state["optimizer"]), state


def load_partial(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load a subset of parameters by our names (stage 1's trained connector into stage 2)."""
    own = model.state_dict()
    unknown = [k for k in tensors if k not in own]
    bad = [f"{k}: {tuple(t.shape)} vs {tuple(own[k].shape)}" for k, t in tensors.items()
           if k in own and tuple(t.shape) != tuple(own[k].shape)]
    if unknown or bad:
        raise CheckpointError(f"{source} does not fit the model: unknown {unknown[:10]}, shape mismatch {bad[:10]}")
    with torch.no_grad():
        for k, t in tensors.items():
            own[k].copy_(t)
