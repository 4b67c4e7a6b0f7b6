"""Turn `path_or_hub_id` into a local directory: a local dir as is, else a Hugging Face hub id
looked up in the local HF cache (and downloaded only when the network and huggingface_hub are
available). Fails with a message saying which of those was missing."""
from __future__ import annotations

import os
from pathlib import Path

from ocellus.errors import CheckpointError

# every file a loader here reads from a checkpoint directory (tests/unit/test_resolve_files.py keeps the list true)
CHECKPOINT_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "chat_template.json", "additional_chat_templates/*.jinja", "generation_config.json",
                    "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                    "reward_head.json", "classifier_head.json"]


def resolve(path_or_id: str | os.PathLike) -> Path:
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    s = str(path_or_id)
    if p.exists():
        raise CheckpointError(f"{s} is a file; pass the checkpoint directory that holds config.json")
    if s.startswith((".", "/", "~")) or s.count("/") > 1 or not s.strip():
        raise CheckpointError(f"no checkpoint directory at {s}")
    try:
        import huggingface_hub as hf
    except ImportError as e:
        raise CheckpointError(f"{s!r} is not a local directory, and resolving it as a hub id needs the optional "
                              f"dependency huggingface_hub (pip install 'ocellus[hub]')") from e
    try:
        return Path(hf.snapshot_download(s, allow_patterns=CHECKPOINT_FILES))
    except Exception as e:  # offline and not cached, unknown repo, gated repo...
        cache = os.environ.get("HF_HUB_CACHE") or getattr(hf.constants, "HF_HUB_CACHE", "the HF cache")
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
        raise CheckpointError(f"{s!r} is not a local directory and is not in the Hugging Face cache ({cache}); "
                              f"{'offline mode is on (HF_HUB_OFFLINE)' if offline else 'download failed'}: "
                              f"{type(e).__name__}: {e}") from e


def default_model_dir() -> Path:
    """The embedded default model's directory (ocellus/assets/llava-tiny-shapes, shipped as package data):
    a tiny LLaVA (ViT + MLP connector + decoder) trained from scratch on the shapes world by
    scripts/make_default_model.sh. `ocellus demo` and `ocellus chat` use it when no --model is given."""
    path = Path(__file__).resolve().parents[1] / "assets" / "llava-tiny-shapes"
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the embedded default model is missing from {path}; rebuild it with "
                              "scripts/make_default_model.sh (or pass --model DIR)")
    return path
