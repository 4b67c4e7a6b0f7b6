"""Several processes, one recipe: `torchrun --nproc_per_node=N -m ocellus.cli train RECIPE.yaml`.

strategy "ddp": each process holds the whole model, gradients are averaged after backward
(DistributedDataParallel). strategy "fsdp": parameters, gradients and optimizer state are
sharded across processes with FSDP2's `fully_shard` (one unit per decoder/encoder layer, then
the root). gloo on CPU, NCCL on GPU. Each process reads every world_size-th batch of the same
seeded permutation (BatchLoader's rank/world_size), so N processes with batch b see exactly the
samples one process sees with batch N*b.

Checkpoints hold full (unsharded) tensors, so a run saved under FSDP resumes under DDP or on
one process too. Gathering and scattering them are collective calls: every rank takes part.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ocellus.errors import ConfigError

STRATEGIES = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(strategy: str = "ddp") -> DistInfo:
    """Join the process group torchrun describes in the environment; a single process (no
    WORLD_SIZE) runs undistributed whatever the strategy says."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"distributed strategy must be one of {STRATEGIES}, got {strategy!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or strategy == "none":
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, strategy)


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    if info.world_size == 1:
        return model
    if info.strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if torch.cuda.is_available() else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (info.world_size,))
    for module in model.modules():           # one shard unit per transformer block
        if type(module).__name__ in ("DecoderLayer", "EncoderBlock"):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_fsdp(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU tensors by our parameter names (collective under FSDP)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_full_state(model: nn.Module, optimizer, model_state: dict, optim_state: dict) -> None:
    """Scatter full tensors back into a (possibly sharded) model and optimizer. A checkpoint may leave tensors out
    (save_trainable_only); one naming a tensor the model lacks is refused, sharded or not (FSDP2 keeps the names)."""
    foreign = set(model_state) - set(model.state_dict())
    if foreign:
        raise ConfigError(f"checkpoint tensors {sorted(foreign)[:5]} are not in the model")
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, model_state, options=opts)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optim_state, options=opts)
        return
    model.load_state_dict(model_state, strict=False)
    optimizer.load_state_dict(optim_state)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()  # no rank leaves while another still talks to it (gloo aborts on a vanished peer)
        dist.destroy_process_group()
