"""Read and write (sharded) safetensors checkpoints, with errors that name the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ocellus.errors import CheckpointError
from ocellus.hub.checkpoint_dir import inside, read_json_object

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def tied_aliases(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name: the earlier name whose tensor it is}: the same storage, offset, shape, strides and dtype (a head
    tied to the word embeddings, modules shared between two towers). safetensors refuses shared memory, so
    such a name is written once, under the first; both the exports (a Family's `tied`) and the training
    checkpoints (train/state.untie) find them here."""
    seen, tied = {}, {}
    for name, t in tensors.items():
        if not t.numel():
            continue
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in seen:
            tied[name] = seen[view]
        else:
            seen[view] = name
    return tied


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint dir: the index's shards, or the single file."""
    index = read_json_object(path / INDEX)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{path / INDEX} is not a valid safetensors index: 'weight_map' must map "
                                  f"tensor names to shard file names")
        files = [inside(path, f) for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise CheckpointError(f"{path / INDEX} names shard(s) missing from {path}: {absent}")
        return files
    if (path / SINGLE).exists():
        return [inside(path, SINGLE)]
    found = sorted(p.name for p in path.glob("*.safetensors"))
    if found:
        return [inside(path, f) for f in found]
    raise CheckpointError(f"no {SINGLE} or {INDEX} in {path} (found: {sorted(p.name for p in path.iterdir())})")


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of all shards. A truncated or corrupt file raises CheckpointError naming it."""
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as st:
                for key in st.keys():
                    if key in out:
                        raise CheckpointError(f"tensor {key!r} appears in more than one shard (again in {f.name})")
                    out[key] = st.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot read {f}: {e} (truncated or corrupt safetensors file?)") from e
    return out


def write_tensors(tensors: dict[str, torch.Tensor], path: Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write model.safetensors, or shards + index when larger than max_shard_bytes. Each file is
    written to a temporary name and renamed, so a crash never leaves a half-written checkpoint."""
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t.contiguous()
        size += n
    names = [SINGLE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        tmp = path / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path / name)
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        _atomic_write_text(path / INDEX, json.dumps(index, indent=2))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
