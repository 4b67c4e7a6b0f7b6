"""Files of a checkpoint directory, read as untrusted input.

A JSON file (config.json, an index, a processor config) must hold a JSON object: malformed JSON, a list
or a string is a CheckpointError naming the file, never a KeyError / TypeError / AttributeError later.
Every file a checkpoint names (shards in model.safetensors.index.json) or holds (symlinks) must resolve
inside the directory, so a downloaded checkpoint cannot make the loader read /etc/passwd or ../secret.
A Hugging Face cache snapshot (models--org--name/snapshots/<rev>/) links to ../../blobs/: its root is the
repository folder models--org--name.
"""
from __future__ import annotations

import json
from pathlib import Path

from ocellus.errors import CheckpointError


def confinement_root(directory: Path) -> Path:
    """The folder a checkpoint's files must resolve into: the directory, or for a hub cache snapshot
    its models--org--name folder (where snapshots/<rev>/ files link to blobs/)."""
    directory = Path(directory).resolve()
    if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith(("models--", "datasets--")):
        return directory.parent.parent
    return directory


def inside(directory: Path, name: str) -> Path:
    """directory / name, refused (CheckpointError) when it resolves outside the directory: an absolute
    name, a `..` name, a symlink pointing elsewhere."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{directory}: a file name must be a non-empty string, got {name!r}")
    path = Path(directory) / name
    root = confinement_root(directory)
    if not path.resolve().is_relative_to(root):
        raise CheckpointError(f"{path} resolves to {path.resolve()}, outside the checkpoint directory {root}; "
                              "refusing to read it")
    return path


def read_json_object(path: Path, error: type = CheckpointError) -> dict | None:
    """A JSON object from `path`, or None when there is no such file. Unreadable or malformed JSON, or another
    JSON value, is `error` naming the file (ConfigError where a caller reads a config it was handed)."""
    path = Path(path)
    if not path.is_file() and not path.is_symlink():
        return None
    inside(path.parent, path.name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise error(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got a JSON {type(data).__name__}")
    return data


def read_config(directory: Path) -> dict:
    """config.json of a checkpoint directory (required)."""
    cfg = read_json_object(Path(directory) / "config.json")
    if cfg is None:
        raise CheckpointError(f"no config.json in {directory}")
    return cfg
