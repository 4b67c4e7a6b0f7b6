"""Post-training rows from a Hugging Face dataset (`data: {source: hf, ...}`, data/hf_dataset.py), in TRL's
formats, for the readers train/posttrain.py already has:

    preference  {"prompt", "chosen", "rejected", "images"}  -> PreferencePair   (task rm, dpo: pair_dataset)
    prompt      {"prompt", "images", **columns}             -> PromptRow        (task grpo, ppo: prompt_loader);
                                                               the columns reach the reward functions by name

Every row is checked once before training (train/preference.py's checks + its images decoded): a bad row is
an InputError naming the dataset and the row, or with data.skip_bad_samples is left out and counted.

With data.streaming (data/hf_stream.py) nothing is read before step 1: `stream_loader` is the Trainer's loader
over the streamed rows (each task's rows as above, and task vlm's conversations through its `sample_data`
hook), its position the batches taken (train/shard_loader.StreamLoader), each row checked when its batch is made.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ocellus.data.bad_samples import BadSample, BadSampleReport
from ocellus.data.hf_dataset import _conversation, read_rows, source_name, trl_row
from ocellus.data.hf_stream import HFStream, RowDecoder, data_files, stream_format, streaming
from ocellus.data.image import load_image
from ocellus.errors import ConfigError, InputError
from ocellus.train.preference import preference_pair, prompt_row
from ocellus.train.recipe_data import EncodedDataset
from ocellus.train.shard_loader import StreamLoader

log = logging.getLogger(__name__)


def _loaded(images: list, row) -> list:
    try:
        return [load_image(im, name=f"row {row}, image {j}") for j, im in enumerate(images)]
    except InputError as e:
        raise BadSample("bad_image", str(e)) from e


def preference_item(rows, i: int):
    """Row i of a preference dataset -> its checked PreferencePair, images decoded."""
    pair = preference_pair(trl_row(rows, i), i)
    return replace(pair, images=_loaded(pair.images, i))


def prompt_item(rows, i: int):
    """Row i of a prompt-only dataset -> its checked PromptRow, images decoded."""
    row = prompt_row(trl_row(rows, i), i)
    return replace(row, images=_loaded(row.images, i))


CONVERT = {"preference": preference_item, "prompt": prompt_item, "llava": _conversation, "messages": _conversation}


def _read(recipe: dict, fmt: str, convert):
    data = recipe["data"]
    report = BadSampleReport(source_name(data))
    rows = read_rows(data, (fmt,), recipe["task"], skip_bad_samples=bool(data.get("skip_bad_samples", False)),
                     report=report, convert=convert)
    if report.skipped:
        log.info(f"[{recipe.get('name', recipe['task'])}] {report.summary()}")
    return rows


def preference_dataset(recipe: dict):
    """The recipe's preference rows as PreferencePairs (images decoded), made on access; `make_row(i)` gives
    row i as a checked TRL row (dpo's method.rejected: model rewrites its rejected answer). data.streaming:
    Streamed (read by the loader posttrain.fit makes)."""
    if streaming(recipe["data"]):
        return Streamed(recipe, "preference")
    rows = _read(recipe, "preference", preference_item)
    dataset = EncodedDataset(len(rows), rows.__getitem__)
    dataset.make_row = lambda i: (lambda p: {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                             "images": p.images, **p.extra})(rows[i])
    return dataset


def prompt_dataset(recipe: dict):
    """The recipe's prompt-only rows as PromptRows (images decoded), made on access (data.streaming:
    Streamed, read by the loader posttrain.prompt_loader makes)."""
    if streaming(recipe["data"]):
        return Streamed(recipe, "prompt")
    rows = _read(recipe, "prompt", prompt_item)
    return EncodedDataset(len(rows), rows.__getitem__)


# ---- streaming ------------------------------------------------------------------------------------------
class Streamed:
    """A post-training task's streamed rows: nothing read yet; `loader(batch_size, collate)` reads them."""

    def __init__(self, recipe: dict, fmt: str):
        self.recipe, self.format = recipe, fmt

    def loader(self, batch_size: int, collate) -> "HFStreamLoader":
        return stream_loader(self.recipe, (self.format,), batch_size, collate)


class HFStreamLoader(StreamLoader):
    """data.streaming: the rows of data/hf_stream.HFStream, batch by batch."""
    kind = "hf_stream"
    KEYS = {"seed": "seed", "files": "data.path", "n": "data.n", "batch_size": "train.batch_size",
            "shuffle_buffer": "data.shuffle_buffer", "world_size": "the number of processes",
            "workers": "data.num_workers"}

    def __init__(self, data: dict, batch_size: int, decode, collate, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, files: list | None = None):
        super().__init__(batch_size, collate, num_workers=int(data.get("num_workers", 0)), name=source_name(data))
        self.data, self.decode, self.seed, self.rank, self.world_size = data, decode, seed, rank, world_size
        self.files = files if files is not None else data_files(data)
        self.buffer, self.skip_bad = int(data.get("shuffle_buffer", 1)), bool(data.get("skip_bad_samples", False))

    def _stream(self):
        return HFStream(self.data, self.files, self.batch_size, self.decode, seed=self.seed, buffer=self.buffer,
                        rank=self.rank, world=self.world_size, workers=self.workers, start_batches=self.batches,
                        skip_bad=self.skip_bad)

    def _fingerprint(self) -> dict:
        return {"seed": self.seed, "files": [str(f) for f in self.files], "n": self.data.get("n"),
                "batch_size": self.batch_size, "shuffle_buffer": self.buffer, "world_size": self.world_size,
                "workers": self.workers}


def stream_loader(recipe: dict, formats: tuple[str, ...], batch_size: int, collate, then=lambda x: x, *,
                  rank: int = 0, world_size: int = 1) -> HFStreamLoader:
    """The streamed rows of a task reading `formats`: each converted as a map-style dataset's row is (CONVERT),
    then `then` (task vlm: its SampleEncoder), batched and collated."""
    data = recipe["data"]
    files = data_files(data)
    fmt = stream_format(data, files)
    if fmt not in formats:
        raise ConfigError(f"data.format {fmt}: task {recipe['task']} reads {' or '.join(formats)} rows")
    path = Path(data["path"]) if data.get("path") else None   # image names are relative to it, as map-style
    root = Path(data["image_root"]) if data.get("image_root") else path if path is None or path.is_dir() else path.parent
    decode = RowDecoder(fmt, root, source_name(data), CONVERT[fmt], then)
    return HFStreamLoader(data, batch_size, decode, collate, seed=int(recipe.get("seed", 0)), rank=rank,
                          world_size=world_size, files=files)


def trainer_stream_loader(recipe: dict, task, tok, model, batch_size: int, info) -> HFStreamLoader:
    """data.streaming for a Trainer task (vlm): its `sample_data` hook encodes each streamed conversation."""
    if not hasattr(task, "sample_data"):
        raise ConfigError(f"data.streaming: task {recipe['task']!r} does not read Hugging Face conversations")
    encode, collate = task.sample_data(recipe, tok, model)
    return stream_loader(recipe, ("llava", "messages"), batch_size, collate, encode, rank=info.rank,
                         world_size=info.world_size)
