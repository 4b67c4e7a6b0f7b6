"""LLaVA-format data files (haotian-liu/LLaVA's llava_v1_5_mix665k.json layout).

write_llava_json() writes shapes samples as PNGs + data.json + meta.jsonl with the ground truth;
read_llava_json() reads any such file (.json list or .jsonl lines, LLaVA records or TRL rows) back,
stopping at the first bad record with its file and index (InputError), or skipping bad records when asked
and counting them by reason (data/bad_samples.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

from ocellus.data.bad_samples import BadSample, BadSampleReport
from ocellus.data.messages import Conversation, from_llava, from_trl, text_part, to_llava
from ocellus.data.shapes import ShapesConfig, samples
from ocellus.errors import InputError

log = logging.getLogger(__name__)


def _llava_messages(messages: list[dict]) -> list[dict]:
    # LLaVA data writes "<image>\nQuestion": a text right after an image starts on a new line.
    out = []
    for m in messages:
        parts = []
        for part in m["content"]:
            if part["type"] == "text" and parts and parts[-1]["type"] == "image":
                part = text_part("\n" + part["text"])
            parts.append(part)
        out.append({"role": m["role"], "content": parts})
    return out


def write_llava_json(out_dir, cfg: ShapesConfig, n: int, kind: str = "mixed", start: int = 0,
                     image_dir: str = "images") -> Path:
    """Write samples start..start+n-1 as LLaVA training data; returns the path of data.json.

    out_dir/images/<id>.png  the images
    out_dir/data.json        [{"id", "image": "images/<id>.png", "conversations": [{"from": "human",
                             "value": "<image>\\nQuestion..."}, {"from": "gpt", "value": "..."}, ...]}, ...]
    out_dir/meta.jsonl       one line per id: {"id", "kind", "type", "answer", "objects", ...}
    Image paths are relative to out_dir (LLaVA's --image_folder)."""
    out_dir = Path(out_dir)
    (out_dir / image_dir).mkdir(parents=True, exist_ok=True)
    records = []
    with open(out_dir / "meta.jsonl", "w", encoding="utf-8") as meta:
        for sample in samples(cfg, n, kind, start):
            relative = f"{image_dir}/{sample['id']}.png"
            sample["images"][0].save(out_dir / relative, format="PNG")
            records.append(to_llava(_llava_messages(sample["messages"]), [relative], id=sample["id"]))
            truth = {k: v for k, v in sample.items() if k not in ("messages", "images")}
            meta.write(json.dumps({**truth, "image": relative, "image_size": cfg.image_size}) + "\n")
    path = out_dir / "data.json"
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def read_meta(path) -> dict[str, dict]:
    """meta.jsonl (or the directory holding it) -> {id: ground truth}."""
    path = Path(path)
    path = path / "meta.jsonl" if path.is_dir() else path
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["id"]: row for row in rows}


class LlavaData(NamedTuple):
    """What read_llava_json returns: good samples, and one message per skipped record."""

    samples: list[dict]     # {"id", "messages" (normal form), "images": [Path, ...], "where": "record 3"}
    skipped: list[str]


def read_llava_json(path, image_root=None, *, skip_bad_samples: bool = False, check_images: bool = True,
                    report: BadSampleReport | None = None) -> LlavaData:
    """Read a LLaVA-format file: a .json list of records or a .jsonl file of one record per line. A record
    is a LLaVA record ({"image", "conversations"}) or a TRL row ({"messages", "images"}).

    Image paths are relative to image_root (default: the file's directory), the data root. A bad record —
    invalid JSON (of a .jsonl line), not a LLaVA record or TRL row, no assistant turn, an image path that
    is absolute or leaves the data root (`..`, a symlink), an image file that does not exist, a count of
    "<image>" placeholders different from the number of images — raises InputError naming the file and
    the record (index and id, or line), unless skip_bad_samples=True: then it is left out, counted by
    reason in `report` (data/bad_samples.py), logged as a warning and returned in `skipped`. A .json file
    that is not valid JSON as a whole cannot be split into records and always raises."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e

    entries = []  # (where, record or the parse error)
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append((f"line {lineno}", json.loads(line)))
                except ValueError as e:
                    entries.append((f"line {lineno}", BadSample("invalid_json", f"invalid JSON: {e}")))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg} (a .json file "
                             "must parse as a whole; use .jsonl to be able to skip single bad records)") from e
        if not isinstance(data, list):
            raise InputError(f"{path}: a LLaVA .json file must hold a list of records, got {type(data).__name__}")
        entries = [(f"record {i}", record) for i, record in enumerate(data)]

    report = report if report is not None else BadSampleReport(str(path))
    report.total += len(entries)
    good, skipped = [], []
    for where, record in entries:
        try:
            if isinstance(record, InputError):
                raise record
            conversation = _conversation(record)  # its errors name the record's id ("row <id>")
            images = [_image_path(root, name, record.get("id"), check_images) for name in conversation.images]
            good.append({"id": record.get("id"), "messages": conversation.messages, "images": images, "where": where})
        except InputError as e:
            message = f"{where}: {e}"
            if not skip_bad_samples:
                raise InputError(f"{path}, {message}") from e
            skipped.append(message)
            report.add(where, e)
    if skipped:
        log.warning("%s: skipped %d of %d records (skip_bad_samples=True); first: %s",
                    path, len(skipped), len(entries), skipped[0])
    return LlavaData(good, skipped)


def _conversation(record) -> Conversation:
    """A LLaVA record or a TRL row -> Conversation with at least one assistant turn."""
    try:
        conversation = from_trl(record) if isinstance(record, dict) and "messages" in record else from_llava(record)
    except InputError as e:
        raise BadSample("invalid_record", str(e)) from e
    if not any(m["role"] == "assistant" for m in conversation.messages):
        raise BadSample("no_assistant_turn", f"id {record.get('id')!r}: the conversation has no assistant turn, "
                                             "so nothing to train on")
    return conversation


def _image_path(root: Path, name, record_id, check_exists: bool) -> Path:
    """An image's path under the data root; absolute names and names resolving outside the root are refused."""
    if not isinstance(name, str) or not name:
        raise BadSample("invalid_record", f"id {record_id!r}: an image must be a file name, got {name!r}")
    if Path(name).is_absolute():
        raise BadSample("absolute_image_path", f"id {record_id!r}: image path {name!r} is absolute; image paths "
                                               f"are relative to the data root {root}")
    image = root / name
    if not image.resolve().is_relative_to(root.resolve()):
        raise BadSample("image_outside_root", f"id {record_id!r}: image path {name!r} resolves to "
                                              f"{image.resolve()}, outside the data root {root}")
    if check_exists and not image.is_file():
        raise BadSample("missing_image", f"id {record_id!r}: image file {image} does not exist")
    return image
