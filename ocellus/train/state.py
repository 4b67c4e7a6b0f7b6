"""Training checkpoints: tensors in safetensors, everything else in JSON, written atomically.

    out/checkpoints/step-000120/
        model.safetensors       the model tensors the Trainer keeps (trainer.checkpointed_state), our names;
                                tied tensors (one storage under several names) written once
        optimizer.safetensors   optimizer tensors: "state.<param index>.<name>"
        rng.safetensors         torch's CPU RNG state (and CUDA's when present)
        state.json              step, optimizer param_groups, scheduler, data position, metrics, and
                                "tied": {name: the name its tensor is written under}
    out/checkpoints/latest      the name of the newest complete checkpoint

A checkpoint is written into `step-N.tmp/`, its files fsynced, and renamed when complete, then `latest`
is replaced by rename: a crash at any moment leaves the previous checkpoint intact and `latest` pointing
to it. Saving a step that already exists never deletes the one `latest` names first: the new copy gets
its own name (`step-N-2`, ...), `latest` switches to it, and only then is the old copy removed.
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
from ocellus.hub.safetensors_io import tied_aliases


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


def untie(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (CPU tensors with each tied one once, {alias: the name it is written under}). safetensors refuses
    tensors that share memory (ALBEF / BLIP tie their MLM / LM head to the word embeddings), so a name whose
    tensor is exactly an earlier one's (same storage, offset, shape, strides) becomes an alias; any other
    tensor overlapping another's storage is written as its own copy."""
    tied = tied_aliases(tensors)
    kept = {name: t.detach().cpu().contiguous() for name, t in tensors.items() if name not in tied}
    storages: dict[int, int] = {}
    for t in kept.values():
        if t.numel():
            storages[t.untyped_storage().data_ptr()] = storages.get(t.untyped_storage().data_ptr(), 0) + 1
    kept = {k: t.clone() if t.numel() and storages[t.untyped_storage().data_ptr()] > 1 else t
            for k, t in kept.items()}
    return kept, tied


def save_checkpoint(root: Path, step: int, model_state: dict[str, torch.Tensor], optim_state: dict,
                    scheduler_state: dict | None, extra: dict) -> Path:
    """Write one checkpoint (call on one process; gather sharded state first)."""
    root = Path(root)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model_tensors, tied = untie(model_state)
    save_file(model_tensors, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optim_state)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler_state, "tied": tied, **extra}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    _fsync_dir_files(tmp)
    final, replaced = root / f"step-{step:06d}", []
    n = 1
    while final.exists():                  # re-saving a step: a new name, the old copy goes after the switch
        replaced.append(final)
        n += 1
        final = root / f"step-{step:06d}-{n}"
    os.replace(tmp, final)
    pointer = root / "latest.tmp"
    with open(pointer, "w") as f:
        f.write(final.name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, root / "latest")
    _fsync_dir(root)
    for old in replaced:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir_files(folder: Path) -> None:
    """Flush every file of `folder` to disk before the rename that makes it visible."""
    for f in folder.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:             # platforms that cannot open a directory (Windows): renames are what we have
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    _check_state(state, path / "state.json")
    if "torch" not in rng:
        raise CheckpointError(f"{path / 'rng.safetensors'} holds no 'torch' RNG state")
    try:
        optimizer = _unflatten_optimizer(opt_tensors, state["optimizer"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: optimizer.safetensors and state.json's 'optimizer' do not fit: {e!r}") from e
    tied = state.get("tied", {})
    if not isinstance(tied, dict) or any(not isinstance(v, str) or v not in tensors for v in tied.values()):
        raise CheckpointError(f"{path / 'state.json'}: 'tied' must map names to tensors of model.safetensors")
    tensors.update({alias: tensors[name] for alias, name in tied.items()})
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return tensors, optimizer, state


# what resume reads from state.json, and the JSON type each must have
_STATE_FIELDS = {"step": int, "optimizer": dict, "data": dict}


def _check_state(state, where: Path) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} must hold a JSON object, not {type(state).__name__}")
    for key, kind in _STATE_FIELDS.items():
        if key not in state:
            raise CheckpointError(f"{where} has no {key!r}")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"{where}: {key!r} must be a {kind.__name__}, not {type(state[key]).__name__}")
    opt = state["optimizer"]
    if not isinstance(opt.get("param_groups"), list) or not isinstance(opt.get("scalars"), dict):
        raise CheckpointError(f"{where}: 'optimizer' needs a 'param_groups' list and a 'scalars' object")
    if state.get("scheduler") is not None and not isinstance(state["scheduler"], dict):
        raise CheckpointError(f"{where}: 'scheduler' must be an object")
    if not isinstance(state.get("history", []), list):
        raise CheckpointError(f"{where}: 'history' must be a list")


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
