"""A resumable batch loader: a seeded permutation per epoch, batches cut from it in order.

Its whole state is (epoch, position), so a checkpoint restores exactly the batch sequence an
uninterrupted run would have seen (bitwise-equal losses after resume). Under several processes
each rank takes every world_size-th batch of the same permutation. A dataset with `set_epoch(epoch)`
(PyTorch's DistributedSampler convention) is told the epoch before each batch is made, so samples drawn
fresh every epoch (MoCo's augmented views) follow from the position too, and a resumed run sees the same ones.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ocellus.errors import ConfigError


class BatchLoader:
    def __init__(self, dataset: Sequence, batch_size: int, collate: Callable[[list], dict], seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if len(dataset) < batch_size * world_size:
            raise ConfigError(f"dataset of {len(dataset)} samples is smaller than one global batch "
                              f"({batch_size} x {world_size} processes)")
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0   # position: global batches already taken this epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.dataset)))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def batches_per_epoch(self) -> int:
        n = len(self.dataset) // (self.batch_size * self.world_size)
        return n

    def next_batch(self) -> dict:
        if self.position >= self.batches_per_epoch():
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order()
        start = (self.position * self.world_size + self.rank) * self.batch_size
        idx = order[start:start + self.batch_size]
        self.position += 1
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        return self.collate([self.dataset[i] for i in idx])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ConfigError(f"checkpoint was made with data seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
