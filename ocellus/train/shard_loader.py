"""The Trainer's loader over tar shards (`data: {source: shards, ...}`, data/shards.py): the BatchLoader
interface (next_batch, state_dict, load_state_dict) over a torch DataLoader whose workers decode and
preprocess the images of their own shards while the trainer steps.

Its position is the number of batches the trainer took, saved in every checkpoint (state.json "data"); the
same on every rank (each takes one batch per micro-step), so the one rank 0 saves serves all. A resumed run
builds the workers again at that position (data.shards.ShardStream.start_batches): it sees the samples an
uninterrupted run would have seen next. The position is tied to the run's seed, shard list, batch size,
buffer, ranks and workers; a checkpoint made with others is a ConfigError naming the one that changed.
"""
from __future__ import annotations

import logging
from typing import Callable

from ocellus.data.bad_samples import BadSampleReport
from ocellus.data.shards import ShardStream, shard_paths, split_shards
from ocellus.errors import ConfigError

log = logging.getLogger(__name__)


class ShardLoader:
    def __init__(self, shards: list, batch_size: int, decode: Callable, collate: Callable, *, seed: int = 0,
                 buffer: int = 1, num_workers: int = 0, rank: int = 0, world_size: int = 1, skip_bad: bool = False,
                 name: str = "shards"):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.shards, self.batch_size, self.decode, self.collate = list(shards), batch_size, decode, collate
        self.seed, self.buffer, self.num_workers = seed, buffer, num_workers
        self.rank, self.world_size, self.skip_bad = rank, world_size, skip_bad
        self.workers = max(1, num_workers)              # logical streams: one in-process when num_workers is 0
        split_shards(self.shards, rank, world_size, 0, self.workers)
        self.batches = 0                                # batches the trainer took: the whole position
        self.report = BadSampleReport(name)
        self._iter = None

    def my_shards(self) -> list:
        """The shards this rank reads (all its workers together)."""
        return self.shards[self.rank::self.world_size]

    def _start(self):
        stream = ShardStream(self.shards, self.batch_size, self.decode, seed=self.seed, buffer=self.buffer,
                             rank=self.rank, world=self.world_size, workers=self.workers,
                             start_batches=self.batches, skip_bad=self.skip_bad)
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

    def _fingerprint(self) -> dict:
        return {"seed": self.seed, "shards": [str(s) for s in self.shards], "batch_size": self.batch_size,
                "shuffle_buffer": self.buffer, "world_size": self.world_size, "workers": self.workers}

    def state_dict(self) -> dict:
        return {"kind": "shards", "batches": self.batches, **self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "shards":
            raise ConfigError("the checkpoint's data position is not a shard stream's (it was made by a run reading "
                              "another data.source)")
        keys = {"seed": "seed", "shards": "data.urls", "batch_size": "train.batch_size",
                "shuffle_buffer": "data.shuffle_buffer", "world_size": "the number of processes",
                "workers": "data.num_workers"}
        for field, what in keys.items():
            if state.get(field) != self._fingerprint()[field]:
                shown = (lambda v: f"{len(v)} shards" if isinstance(v, list) else v)
                raise ConfigError(f"the checkpoint's shard position was made with {what} = {shown(state.get(field))}, "
                                  f"this run has {shown(self._fingerprint()[field])}: resume with the same, or "
                                  f"start a new run")
        self.batches = int(state["batches"])
        self._iter = None                              # the workers start again at the restored position


def shard_loader(recipe: dict, tok, model, batch_size: int, info) -> ShardLoader:
    """task contrastive on tar shards: (image, caption) pairs, the shapes recipe's preprocessing and collate."""
    from ocellus.data.shards import ImageText
    from ocellus.train.contrastive_run import _image_size, caption_collate, image_cfg
    data = recipe["data"]
    shards = shard_paths(data["urls"])
    loader = ShardLoader(shards, batch_size, ImageText(image_cfg(_image_size(model))), caption_collate(tok, model),
                         seed=int(recipe.get("seed", 0)), buffer=int(data.get("shuffle_buffer", 1)),
                         num_workers=int(data.get("num_workers", 0)), rank=info.rank, world_size=info.world_size,
                         skip_bad=bool(data.get("skip_bad_samples", False)), name=str(data["urls"]))
    mine = loader.my_shards()
    log.info(f"[{recipe.get('name')}] rank {info.rank} of {info.world_size} reads {len(mine)} of {len(shards)} shards: "
             f"{', '.join(p.name for p in mine)}")
    return loader
