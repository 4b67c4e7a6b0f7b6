"""Hugging Face `datasets` as training data: local parquet / JSON / arrow files and directories, or a
`datasets.Dataset` handed over in Python, read in the LLaVA conversation format or TRL's formats.

    data: {source: hf, path: DIR_OR_FILE, format: llava | messages | preference | prompt, split: train,
           image_root: DIR, cache_dir: DIR}

Formats (docs/DATA_FORMATS.md has an example record of each), detected from the columns unless data.format
names one:
    llava       {"id", "image": str | [str] | Image, "conversations": [{"from": "human" | "gpt", "value"}]}
    messages    TRL SFT: {"messages": [{"role", "content": str | parts}], "images": [Image | str, ...]}
    preference  TRL DPO / reward model: {"prompt", "chosen", "rejected", "images"} (or implicit prompt)
    prompt      TRL GRPO: {"prompt", "images", **columns}; the other columns go to the reward functions

An image is an HF `Image` feature (encoded bytes, what `datasets` stores for a PIL image) or a file name
relative to the data root (data.image_root; default the dataset's directory, or the file's). Rows are read as
arrow (the `Image` feature is never decoded by `datasets`): the bytes go to data/image.load_image, whose
typed errors make a corrupt image a bad sample like any other (data/bad_samples.py), named by file and row.

`datasets` is imported only here, when a run reads such data (`pip install 'ocellus[data]'`).
"""
from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from ocellus.data.bad_samples import BadSample, BadSampleReport
from ocellus.data.llava_json import _conversation as checked_conversation, _image_path
from ocellus.errors import ConfigError, InputError

FORMATS = ("llava", "messages", "preference", "prompt")
# what each format needs among the columns; the first format whose columns are all there is the detected one
COLUMNS = {"llava": ("conversations",), "messages": ("messages",), "preference": ("chosen", "rejected"),
           "prompt": ("prompt",)}
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json"}
_GIVEN: contextvars.ContextVar = contextvars.ContextVar("ocellus_hf_dataset", default=None)


def require_datasets():
    try:
        import datasets
    except ImportError as e:
        raise ConfigError("data.source hf reads Hugging Face datasets: pip install 'ocellus[data]' "
                          "(the `datasets` package)") from e
    return datasets


@contextlib.contextmanager
def given(dataset):
    """The dataset `data: {source: hf}` reads inside this block when the recipe has no data.path: what
    `ocellus.train.tasks.run_recipe(recipe, dataset=ds)` passes on."""
    token = _GIVEN.set(dataset)
    try:
        yield
    finally:
        _GIVEN.reset(token)


def source_name(data: dict) -> str:
    return str(data["path"]) if data.get("path") else "the given dataset"


def open_dataset(data: dict):
    """The recipe's data section -> (datasets.Dataset, data root for relative image names or None)."""
    path, split = data.get("path"), data.get("split", "train")
    if path is None:
        ds = _GIVEN.get()
        if ds is None:
            raise ConfigError("data.source hf needs data.path (a parquet / JSON / arrow file or directory) or a "
                              "datasets.Dataset passed as run_recipe(recipe, dataset=ds)")
        root = Path(data["image_root"]) if data.get("image_root") else None
    else:
        datasets, p = require_datasets(), Path(path)
        if not p.exists():
            raise ConfigError(f"data.path {p} does not exist")
        root = Path(data["image_root"]) if data.get("image_root") else (p if p.is_dir() else p.parent)
        try:
            if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
                ds = datasets.load_from_disk(str(p))                       # Dataset.save_to_disk output
            elif p.is_dir():
                ds = datasets.load_dataset(_builder_of_dir(p), data_dir=str(p), cache_dir=data.get("cache_dir"))
            else:
                if p.suffix not in BUILDERS:
                    raise ConfigError(f"data.path {p}: a file must be {', '.join(BUILDERS)} (or give a directory)")
                ds = datasets.load_dataset(BUILDERS[p.suffix], data_files=str(p), cache_dir=data.get("cache_dir"))
        except (ConfigError, InputError):
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow / datasets raise many kinds for one unreadable input
            raise InputError(f"{p}: cannot read it as a Hugging Face dataset: {type(e).__name__}: {e}") from e
    return _one_split(ds, split), root


def _builder_of_dir(p: Path) -> str:
    for suffix in (".parquet", ".arrow", ".jsonl", ".json"):   # data files beside images: the data files decide
        if next(p.rglob(f"*{suffix}"), None) is not None:
            return BUILDERS[suffix]
    raise ConfigError(f"data.path {p} holds no .parquet, .arrow, .jsonl or .json files")


def _one_split(ds, split: str):
    if isinstance(ds, dict):   # a DatasetDict (a dict of splits)
        if split not in ds:
            raise ConfigError(f"data.split {split!r} is not a split of this dataset; it has {sorted(ds)}")
        ds = ds[split]
    if not hasattr(ds, "with_format") or not hasattr(ds, "__len__"):
        raise ConfigError(f"data.source hf reads a datasets.Dataset (map-style), got {type(ds).__name__}; an "
                          "IterableDataset is read with data.streaming: true (data/hf_stream.py)")
    return ds


def detect_format(columns, declared: str | None = None) -> str:
    """data.format, checked against the columns, or the first of FORMATS whose columns are there."""
    columns = set(columns)
    if declared is not None:
        if declared not in FORMATS:
            raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got {declared!r}")
        missing = [c for c in COLUMNS[declared] if c not in columns]
        if missing:
            raise ConfigError(f"data.format {declared}: the dataset has no column {missing[0]!r} "
                              f"(its columns: {sorted(columns)})")
        return declared
    for fmt in FORMATS:
        if all(c in columns for c in COLUMNS[fmt]):
            return fmt
    raise ConfigError(f"data.format: no known format fits the columns {sorted(columns)} (llava: conversations; "
                      "messages: messages; preference: chosen + rejected; prompt: prompt)")


class HFRows:
    """A datasets.Dataset read row by row as arrow: `raw(i)` is row i as Python values, its images as what
    `image_source` makes of them (bytes, or a checked path under the data root)."""

    def __init__(self, ds, fmt: str, root: Path | None, name: str):
        self.ds, self.format, self.root, self.name = ds, fmt, root, name
        self._arrow = ds.with_format("arrow")

    def __len__(self) -> int:
        return len(self.ds)

    def raw(self, i: int) -> dict:
        return self._arrow[i].to_pylist()[0]

    def where(self, i: int) -> str:
        return f"row {i}"

    def images(self, value, row_id) -> list:
        values = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
        return [image_source(v, self.root, row_id) for v in values]


def image_source(value, root: Path | None, row_id=None):
    """One image cell -> what data/image.load_image reads: an `Image` feature's bytes, or the path of a file
    name under the data root (absolute names and names leaving the root are refused, as in LLaVA JSON)."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):   # the `Image` feature's storage
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if hasattr(value, "mode") and hasattr(value, "size"):                 # a PIL image
        return value
    if isinstance(value, str) and value:
        if root is None:
            raise ConfigError(f"row {row_id}: image {value!r} is a file name; set data.image_root (the directory "
                              f"the names are relative to) for a dataset passed in Python")
        return _image_path(root, value, row_id, True)
    raise BadSample("invalid_record", f"id {row_id!r}: an image must be an Image feature, bytes or a file name, "
                                      f"got {type(value).__name__}")


def _conversation(rows: HFRows, i: int) -> dict:
    """Row i of a llava / messages dataset -> the sample form of llava_json.read_llava_json."""
    row = rows.raw(i)
    row_id = row.get("id", i)
    if rows.format == "llava":
        record = {"id": row_id, "conversations": row.get("conversations"), "image": None}
        images = row.get("image", row.get("images"))
    else:
        record = {"id": row_id, "messages": row.get("messages"), "images": None}
        images = row.get("images")
    images = rows.images(images, row_id)
    if rows.format == "llava":
        record["image"] = images
    else:
        record["images"] = images
    conversation = checked_conversation(record)
    return {"id": row_id, "messages": conversation.messages, "images": list(conversation.images),
            "where": rows.where(i)}


def trl_row(rows: HFRows, i: int) -> dict:
    """Row i of a preference / prompt dataset as a TRL row dict, its images made loadable (train/preference.py
    checks and converts it)."""
    row = dict(rows.raw(i))
    row["images"] = rows.images(row.get("images"), row.get("id", i))
    return row


class Checked:
    """The rows of an HF dataset that passed the check, as a sequence; each made again on access (the image
    bytes are read then, so nothing large is held)."""

    def __init__(self, make, kept: list[int]):
        self.make, self.kept = make, kept

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, k: int):
        return self.make(self.kept[k])


def read_rows(data: dict, formats: tuple[str, ...], task: str, *, skip_bad_samples: bool = False,
              report: BadSampleReport | None = None, convert=None) -> Checked:
    """The recipe's HF dataset in one of `formats`, every row converted once before training: a bad row
    raises InputError naming the dataset and the row, or with skip_bad_samples is left out and counted in
    `report`. convert(rows, i) -> the sample (default: conversations for llava / messages, TRL rows else)."""
    if data.get("format") in FORMATS and data["format"] not in formats:
        raise ConfigError(f"data.format {data['format']}: task {task} reads {' or '.join(formats)} rows")
    ds, root = open_dataset(data)
    fmt = detect_format(ds.column_names, data.get("format"))
    if fmt not in formats:
        raise ConfigError(f"data.format {fmt}: task {task} reads {' or '.join(formats)} rows "
                          f"(columns {', '.join(c for f in formats for c in COLUMNS[f])})")
    rows = HFRows(ds, fmt, root, source_name(data))
    convert = convert or (_conversation if fmt in ("llava", "messages") else trl_row)
    report = report if report is not None else BadSampleReport(rows.name)
    n = min(int(data["n"]), len(rows)) if data.get("n") is not None else len(rows)
    report.total += n
    kept = []
    for i in range(n):
        try:
            convert(rows, i)
        except InputError as e:
            if not skip_bad_samples:
                raise InputError(f"{rows.name}, {rows.where(i)}: {e} (data.skip_bad_samples: true leaves such "
                                 f"rows out)") from e
            report.add(rows.where(i), e)
        else:
            kept.append(i)
    return Checked(lambda i: convert(rows, i), kept)


def read_conversations(data: dict, *, skip_bad_samples: bool = False,
                       report: BadSampleReport | None = None) -> Checked:
    """task vlm: llava / messages rows -> samples {"id", "messages", "images", "where"}."""
    return read_rows(data, ("llava", "messages"), "vlm", skip_bad_samples=skip_bad_samples, report=report)


__all__ = ["FORMATS", "given", "open_dataset", "detect_format", "read_rows", "read_conversations", "image_source",
           "require_datasets"]
