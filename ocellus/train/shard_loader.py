"""The Trainer's loaders over streams (`data: {source: shards, ...}`, data/shards.py; `data: {source: hf,
streaming: true}`, data/hf_stream.py): the BatchLoader interface (next_batch, state_dict, load_state_dict) over a
torch DataLoader whose workers decode and preprocess their own part of the stream while the trainer steps.

Its position is the number of batches the trainer took, saved in every checkpoint (state.json "data"); the
same on every rank (each takes one batch per micro-step), so the one rank 0 saves serves all. A resumed run
builds the workers again at that position (the stream's start_batches): it sees the samples an uninterrupted
run would have seen next. The position is tied to the run's seed, sources, batch size, buffer, ranks and
workers; a checkpoint made with others is a ConfigError naming the one that changed.

Which samples a task makes of the stream is the task's `shard_data(recipe, tok, model) -> (decode, collate)`
hook (contrastive / moco: train/contrastive_run.py, albef / blip: train/albef_blip_run.py, vlm:
train/tasks/vlm.py): one loader, each task's own decoding.
"""
from __future__ import annotations

import logging
from typing import Callable

from ocellus.data.bad_samples import BadSampleReport
from ocellus.data.shards import ShardStream, shard_paths, split_shards
from ocellus.errors import ConfigError

log = logging.getLogger(__name__)


class StreamLoader:
    """A loader whose whole position is the number of batches taken. Subclasses say what the stream is
    (`_stream()`, built at self.batches) and what the position holds for (`kind`, `_fingerprint()`, `KEYS`:
    fingerprint field -> the recipe key that sets it)."""
    kind = "stream"
    KEYS: dict = {}

    def __init__(self, batch_size: int, collate: Callable, *, num_workers: int = 0, name: str = "stream"):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.collate, self.num_workers = batch_size, collate, num_workers
        self.workers = max(1, num_workers)              # logical streams: one in-process when num_workers is 0
        self.batches = 0                                # batches the trainer took: the whole position
        self.report = BadSampleReport(name)
        self._iter = None

    def _stream(self):
        raise NotImplementedError

    def _fingerprint(self) -> dict:
        raise NotImplementedError

    def _start(self):
        stream = self._stream()
        if self.num_workers == 0:
            return iter(stream)
        from torch.utils.data import DataLoader
        return iter(DataLoader(stream, batch_size=None, num_workers=self.num_workers, prefetch_factor=2))

    def next_raw(self) -> list:
        """The next batch's decoded samples, before collate (what the tests compare)."""
        if self._iter is None:
            self._iter = self._start()
        out = next(self._iter)
        self.batches += 1
        self.report.total += len(out["items"]) + len(out["skipped"])
        for where, reason, message in out["skipped"]:
            self.report.skipped.append({"where": where, "reason": reason, "message": message})
            log.warning("skipped %s (data.skip_bad_samples): %s", where, message)
        return out["items"]

    def next_batch(self) -> dict:
        return self.collate(self.next_raw())

    def state_dict(self) -> dict:
        return {"kind": self.kind, "batches": self.batches, **self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ConfigError(f"the checkpoint's data position is not a {self.kind} stream's (it was made by a run "
                              f"reading another data.source)")
        mine = self._fingerprint()
        for field, what in self.KEYS.items():
            if state.get(field) != mine[field]:
                shown = (lambda v: f"{len(v)} files" if isinstance(v, list) else v)
                raise ConfigError(f"the checkpoint's {self.kind} position was made with {what} = "
                                  f"{shown(state.get(field))}, this run has {shown(mine[field])}: resume with the "
                                  f"same, or start a new run")
        self.batches = int(state["batches"])
        self._iter = None                              # the workers start again at the restored position


class ShardLoader(StreamLoader):
    """Tar shards (data/shards.py ShardStream): each (rank, worker) its own shards."""
    kind = "shards"
    KEYS = {"seed": "seed", "shards": "data.urls", "batch_size": "train.batch_size",
            "shuffle_buffer": "data.shuffle_buffer", "world_size": "the number of processes",
            "workers": "data.num_workers"}

    def __init__(self, shards: list, batch_size: int, decode: Callable, collate: Callable, *, seed: int = 0,
                 buffer: int = 1, num_workers: int = 0, rank: int = 0, world_size: int = 1, skip_bad: bool = False,
                 name: str = "shards"):
        super().__init__(batch_size, collate, num_workers=num_workers, name=name)
        self.shards, self.decode, self.seed, self.buffer = list(shards), decode, seed, buffer
        self.rank, self.world_size, self.skip_bad = rank, world_size, skip_bad
        split_shards(self.shards, rank, world_size, 0, self.workers)

    def my_shards(self) -> list:
        """The shards this rank reads (all its workers together)."""
        return self.shards[self.rank::self.world_size]

    def _stream(self):
        return ShardStream(self.shards, self.batch_size, self.decode, seed=self.seed, buffer=self.buffer,
                           rank=self.rank, world=self.world_size, workers=self.workers,
                           start_batches=self.batches, skip_bad=self.skip_bad)

    def _fingerprint(self) -> dict:
        return {"seed": self.seed, "shards": [str(s) for s in self.shards], "batch_size": self.batch_size,
                "shuffle_buffer": self.buffer, "world_size": self.world_size, "workers": self.workers}


def shard_loader(recipe: dict, task, tok, model, batch_size: int, info) -> ShardLoader:
    """data.source shards for a task with a `shard_data` hook: its decode (a raw tar sample -> the task's
    sample, in the loader workers) and collate."""
    if not hasattr(task, "shard_data"):
        raise ConfigError(f"data.source shards: task {recipe['task']!r} does not read tar shards")
    decode, collate = task.shard_data(recipe, tok, model)
    data = recipe["data"]
    shards = shard_paths(data["urls"])
    loader = ShardLoader(shards, batch_size, decode, collate, seed=int(recipe.get("seed", 0)),
                         buffer=int(data.get("shuffle_buffer", 1)), num_workers=int(data.get("num_workers", 0)),
                         rank=info.rank, world_size=info.world_size, skip_bad=bool(data.get("skip_bad_samples", False)),
                         name=str(data["urls"]))
    mine = loader.my_shards()
    log.info(f"[{recipe.get('name')}] rank {info.rank} of {info.world_size} reads {len(mine)} of {len(shards)} shards: "
             f"{', '.join(p.name for p in mine)}")
    return loader
