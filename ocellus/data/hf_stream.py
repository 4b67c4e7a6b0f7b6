"""Hugging Face datasets streamed: `datasets.load_dataset(..., streaming=True)` over local parquet / JSON files
(an IterableDataset), read row by row without writing the arrow cache or holding the dataset.

    data: {source: hf, streaming: true, path: FILE_OR_DIR, shuffle_buffer: 1000, num_workers: 0}

How a run reads it, all of it seeded by the recipe's seed and exact:
  - epoch: the data files of the split (one file, or a directory's files as datasets resolves them: HF hub
    layout, data.split), in an order reshuffled every epoch (sorted, and only the first data.n rows, when
    data.n is given), each file opened with streaming=True, its rows through the shuffle buffer of
    data/shards.py (a seeded reservoir of shuffle_buffer rows); the epochs loop without end, train.max_steps
    ends the run. A `datasets.IterableDataset` passed to run_recipe(recipe, dataset=ds) streams as one file.
  - batches: the stream is cut into batches of batch_size rows; batch j goes to rank j % W and, among that
    rank's loader workers, to worker (j // W) % K: the DataLoader's turn over the workers gives each rank its
    batches in stream order. Every (rank, worker) reads the whole stream and converts only its own rows.
  - resume: the position is the number of batches the trainer took (train/shard_loader.StreamLoader). Worker w
    made data.shards.batches_made(position, w, K) of them; on resume it skips exactly those batches' rows (and
    the others' in between: read, not converted) and the turn restarts at worker position % K.
  - bad rows: converted when their batch is made (not all before step 1, as a map-style dataset's): an
    InputError naming the file and the row, or with data.skip_bad_samples left out of its batch and counted.
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch.utils.data as tud

from ocellus.data.hf_dataset import BUILDERS, HFRows, _builder_of_dir, _GIVEN, detect_format, require_datasets
from ocellus.data.shards import batches_made, decode_batch, shuffled
from ocellus.errors import ConfigError, InputError


READ_ROWS = 64   # rows datasets reads at a time


class Row(NamedTuple):
    where: str        # "train.parquet, row 17"
    index: int        # the row's number in its file
    values: dict      # its columns, images as the Image feature's {"bytes", "path"} (never decoded by datasets)


def streaming(data: dict) -> bool:
    """Whether `data` streams: data.streaming, or an IterableDataset passed in Python for a recipe without a path."""
    if data.get("source") != "hf":
        return False
    if data.get("streaming"):
        return True
    given = _GIVEN.get()
    return not data.get("path") and given is not None and not hasattr(given, "__len__")


def data_files(data: dict) -> list:
    """The files data.path streams, sorted: itself, or a directory's files of data.split as datasets resolves
    them; [None] for a given IterableDataset."""
    path = data.get("path")
    if path is None:
        if _GIVEN.get() is None:
            raise ConfigError("data.streaming needs data.path (parquet / JSON files) or a datasets.IterableDataset "
                              "passed as run_recipe(recipe, dataset=ds)")
        return [None]
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data.path {p} does not exist")
    if p.is_file():
        if p.suffix not in BUILDERS or p.suffix == ".arrow":
            raise ConfigError(f"data.streaming reads .parquet / .json / .jsonl files, not {p.name} (an arrow file "
                              f"is memory-mapped already: leave data.streaming unset)")
        return [p]
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        raise ConfigError(f"data.path {p} is a Dataset.save_to_disk directory: memory-mapped arrow, read without "
                          f"data.streaming")
    require_datasets()
    from datasets.data_files import DataFilesDict, get_data_patterns   # the optional extra: imported when used
    builder = _builder_of_dir(p)
    if builder == "arrow":
        raise ConfigError(f"data.path {p} holds arrow files: memory-mapped already, read without data.streaming")
    suffixes = [suffix for suffix, b in BUILDERS.items() if b == builder]
    splits = {str(k): v for k, v in DataFilesDict.from_patterns(get_data_patterns(str(p)), base_path=str(p)).items()}
    split = data.get("split", "train")
    if split not in splits:
        raise ConfigError(f"data.split {split!r} is not a split of {p}; it has {sorted(splits)}")
    files = sorted(Path(f) for f in splits[split] if Path(f).suffix in suffixes)
    if not files:
        raise ConfigError(f"data.path {p}: split {split!r} has no .parquet / .json / .jsonl files")
    return files


def file_rows(data: dict, path) -> Iterator[Row]:
    """One file's rows in order, streamed (or the given IterableDataset's), images left undecoded."""
    if path is None:
        ds, name, split = _GIVEN.get(), "the given dataset", data.get("split", "train")
        if isinstance(ds, dict):   # an IterableDatasetDict: data.split picks
            if split not in ds:
                raise ConfigError(f"data.split {split!r} is not a split of the given dataset; it has {sorted(ds)}")
            ds = ds[split]
    else:
        datasets = require_datasets()
        name = path.name
        try:
            ds = datasets.load_dataset(BUILDERS[path.suffix], data_files=[str(path)], split="train", streaming=True,
                                       cache_dir=data.get("cache_dir"))
        except Exception as e:  # noqa: BLE001 - pyarrow / datasets raise many kinds for one unreadable input
            raise InputError(f"{path}: cannot stream it as a Hugging Face dataset: {type(e).__name__}: {e}") from e
    if hasattr(ds, "decode"):
        ds = ds.decode(False)
    try:   # ds.iter, not iter(ds): in a torch loader worker iter(ds) reads only that worker's share of the files
        index = 0
        for batch in ds.iter(batch_size=READ_ROWS):
            for k in range(len(next(iter(batch.values()), []))):
                yield Row(f"{name}, row {index}", index, {column: values[k] for column, values in batch.items()})
                index += 1
    except (InputError, ConfigError):
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file shows only when its rows are read
        raise InputError(f"{name}: cannot read its rows: {type(e).__name__}: {e}") from e


def epoch_rows(data: dict, files: list, seed: int, epoch: int) -> Iterator[Row]:
    """One epoch: the files in this epoch's order (sorted when data.n keeps the first n rows), rows in order."""
    order = list(files)
    if data.get("n") is None:
        random.Random(f"{seed}-{epoch}-files").shuffle(order)
    rows = (row for path in order for row in file_rows(data, path))
    return itertools.islice(rows, int(data["n"])) if data.get("n") is not None else rows


def row_stream(data: dict, files: list, seed: int, buffer: int) -> Iterator[Row]:
    """The endless stream: epoch after epoch through a seeded shuffle buffer."""
    for epoch in itertools.count():
        empty = True
        for row in shuffled(epoch_rows(data, files, seed, epoch), buffer, random.Random(f"{seed}-{epoch}-buffer")):
            empty = False
            yield row
        if empty:
            raise InputError(f"{data.get('path') or 'the given dataset'} holds no rows")


def stream_format(data: dict, files: list) -> str:
    """data.format, or the one detected from the first row's columns."""
    first = next(file_rows(data, files[0]), None)
    if first is None:
        raise InputError(f"{files[0] or 'the given dataset'} holds no rows")
    return detect_format(first.values, data.get("format"))


class RowView(HFRows):
    """One streamed row as the HFRows the format converters read (hf_dataset._conversation, trl_row)."""

    def __init__(self, row: Row, fmt: str, root: Path | None, name: str):
        self.row, self.format, self.root, self.name = row, fmt, root, name

    def __len__(self) -> int:
        return 1

    def raw(self, i: int) -> dict:
        return self.row.values

    def where(self, i: int) -> str:
        return self.row.where


class RowDecoder:
    """A Row -> convert(RowView, its index) -> then(...): what a task makes of one row."""

    def __init__(self, fmt: str, root: Path | None, name: str, convert: Callable, then: Callable = lambda x: x):
        self.fmt, self.root, self.name, self.convert, self.then = fmt, root, name, convert, then

    def __call__(self, row: Row):
        return self.then(self.convert(RowView(row, self.fmt, self.root, self.name), row.index))


class HFStream(tud.IterableDataset):
    """The batches of one rank: {"items": [decoded rows], "skipped": [(where, reason, message)]} per batch."""

    def __init__(self, data: dict, files: list, batch_size: int, decode: Callable, *, seed: int = 0, buffer: int = 1,
                 rank: int = 0, world: int = 1, workers: int = 1, start_batches: int = 0, skip_bad: bool = False):
        self.data, self.files, self.batch_size, self.decode = data, files, batch_size, decode
        self.seed, self.buffer, self.rank, self.world = seed, buffer, rank, world
        self.workers, self.start_batches, self.skip_bad = max(1, workers), start_batches, skip_bad

    def batches(self, physical: int = 0) -> Iterator[dict]:
        worker = (self.start_batches + physical) % self.workers          # the turn continues where it stopped
        period, own = self.world * self.workers, self.rank + self.world * worker
        done = batches_made(self.start_batches, worker, self.workers)   # this worker's batches already taken
        rows = row_stream(self.data, self.files, self.seed, self.buffer)
        for j in itertools.count():
            chunk = list(itertools.islice(rows, self.batch_size))
            if j % period != own:
                continue                                                  # another rank's or worker's batch
            if done > 0:
                done -= 1                                                 # taken before the resume: read only
                continue
            yield decode_batch(chunk, self.decode, self.skip_bad, lambda row: row.where)

    def __iter__(self) -> Iterator[dict]:
        info = tud.get_worker_info()
        return self.batches(info.id if info is not None else 0)


__all__ = ["streaming", "data_files", "stream_format", "row_stream", "RowDecoder", "HFStream", "Row"]
