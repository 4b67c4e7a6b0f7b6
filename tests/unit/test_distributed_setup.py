"""ocellus/train/distributed.py in one process: which runs join a process group, the rank / world size / local rank
setup reports under torchrun (the group faked, so no second process is needed), which rank is the main one, and
the unsharded resume path's check of checkpoint names."""
import pytest
import torch
from torch import nn

import ocellus.train.distributed as D
from ocellus.errors import ConfigError


def test_single_process_or_strategy_none_stays_undistributed(monkeypatch):
    """One process (no WORLD_SIZE) runs undistributed whatever the strategy, and so does strategy none under
    torchrun (WORLD_SIZE=2): neither joins a process group. An unknown strategy is a ConfigError."""
    monkeypatch.setattr(D.dist, "init_process_group", lambda *a, **k: pytest.fail("joined a process group"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for strategy in D.STRATEGIES:
        assert D.setup(strategy) == D.DistInfo()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert D.setup("none") == D.DistInfo()
    with pytest.raises(ConfigError, match="strategy must be one of"):
        D.setup("zero3")


def test_setup_reads_rank_world_and_local_rank(monkeypatch):
    """Under torchrun (faked: a group of 4, this process global rank 3 on its node's device 1) setup reports rank 3
    of 4 with local rank 1; only global rank 0 is the main process (another node's local rank 0 is not)."""
    for key, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(D.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(D.dist, "get_rank", lambda group=None: 3)
    monkeypatch.setattr(D.dist, "get_world_size", lambda group=None: 4)
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: False)
    assert D.setup("fsdp") == D.DistInfo(rank=3, world_size=4, local_rank=1, strategy="fsdp")
    assert D.DistInfo(rank=0, world_size=4, local_rank=0).is_main
    assert not D.DistInfo(rank=2, world_size=4, local_rank=0).is_main


def test_load_full_state_takes_a_partial_checkpoint_and_refuses_foreign_names():
    """Resume (unsharded) loads a checkpoint holding only the trained tensors (save_trainable_only leaves frozen
    ones out) and keeps the rest as they are; a tensor the model lacks is a ConfigError naming it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
    frozen = model[0].weight.detach().clone()
    trained = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items() if k.startswith("1.")}
    D.load_full_state(model, opt, trained, opt.state_dict())
    assert torch.equal(model[1].weight, torch.full((2, 3), 0.5)) and torch.equal(model[0].weight, frozen)
    with pytest.raises(ConfigError, match=r"checkpoint tensors \['2.weight'\] are not in the model"):
        D.load_full_state(model, opt, {**trained, "2.weight": torch.zeros(1)}, opt.state_dict())
