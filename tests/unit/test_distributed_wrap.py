"""ocellus/train/distributed.py past setup's rank arithmetic (tests/unit/test_distributed_setup.py), in one process:
the backend and GPU a torchrun process joins with, what wrap() does for each rank and strategy (DDP / FSDP2 faked:
only the calls are checked), the full-tensor checkpoints of a model really sharded with FSDP2 (a one-process gloo
group), resume restoring the optimizer's state, and barrier / teardown called on every rank."""
import pytest
import torch
import torch.distributed as dist
from torch import nn

import ocellus.train.distributed as D
from ocellus.errors import ConfigError
from tests.unit.test_trainer import tiny_decoder, tiny_llava


@pytest.fixture()
def torchrun(monkeypatch):
    """A faked torchrun process: global rank 3 of 4 on its node's device 1; no group joined yet. -> the calls."""
    calls = []
    for key, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(D.dist, "get_rank", lambda group=None: 3)
    monkeypatch.setattr(D.dist, "get_world_size", lambda group=None: 4)
    monkeypatch.setattr(D.torch.cuda, "set_device", lambda device: calls.append(("device", device)))
    return calls


@pytest.mark.parametrize("cuda, backend", [(False, "gloo"), (True, "nccl")])
def test_setup_joins_with_gloo_on_cpu_and_nccl_on_the_local_gpu(torchrun, monkeypatch, cuda, backend):
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: cuda)
    assert D.setup("ddp") == D.DistInfo(rank=3, world_size=4, local_rank=1, strategy="ddp")
    # the GPU is the node-local rank's (global rank 3 has no device 3 on a 2-GPU node)
    assert torchrun == [("init", backend)] + ([("device", 1)] if cuda else [])


def test_ddp_wraps_every_rank_on_its_local_device(monkeypatch):
    made = []
    monkeypatch.setattr(D.nn.parallel, "DistributedDataParallel", lambda m, **kw: made.append(kw) or ("ddp", m))
    model = nn.Linear(2, 2)
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: False)
    for rank in (0, 1):    # rank 0 too: an unwrapped rank 0 would never average its gradients with the others
        assert D.wrap(model, D.DistInfo(rank=rank, world_size=2, strategy="ddp")) == ("ddp", model)
    assert made == [{"device_ids": None}] * 2
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: True)
    D.wrap(model, D.DistInfo(rank=3, world_size=4, local_rank=1, strategy="ddp"))
    assert made[-1] == {"device_ids": [1]}
    assert D.wrap(model, D.DistInfo()) is model                     # one process: nothing to wrap


def test_fsdp_shards_each_transformer_block_then_the_root(monkeypatch):
    import torch.distributed.device_mesh as device_mesh
    import torch.distributed.fsdp as fsdp
    sharded, meshes = [], []
    monkeypatch.setattr(device_mesh, "init_device_mesh", lambda kind, shape: meshes.append((kind, shape)) or "mesh")
    monkeypatch.setattr(fsdp, "fully_shard", lambda m, mesh: sharded.append(m))
    monkeypatch.setattr(D.nn.parallel, "DistributedDataParallel", lambda m, **kw: pytest.fail("fsdp wrapped as DDP"))
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: False)
    model = tiny_llava()           # a ViT tower (EncoderBlocks) and a decoder (DecoderLayers): both kinds are units
    assert D.wrap(model, D.DistInfo(rank=1, world_size=2, strategy="fsdp")) is model
    blocks = [m for m in model.modules() if type(m).__name__ in ("EncoderBlock", "DecoderLayer")]
    assert {type(m).__name__ for m in blocks} == {"EncoderBlock", "DecoderLayer"}
    assert sharded == blocks + [model] and meshes == [("cpu", (2,))]


@pytest.fixture()
def one_process_group():
    """A real gloo group of one process (FSDP2 shards over it: every parameter becomes a DTensor)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _adam_step(model):
    """One AdamW step on a fixed batch, so the optimizer holds state (step, exp_avg, exp_avg_sq) to resume."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.arange(8)[None] % 50
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    return opt


def _plain(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def test_fsdp_checkpoint_holds_full_tensors_and_resume_restores_model_and_optimizer(one_process_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    def sharded(seed):
        model = tiny_decoder(seed)
        mesh = init_device_mesh("cpu", (1,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    reference = tiny_decoder(0)
    model = sharded(0)
    assert D.is_fsdp(model) and not D.is_fsdp(reference)
    state = D.full_model_state(model)
    # full tensors by our names, equal to the unsharded model's: what a DDP or one-process resume reads
    assert state.keys() == reference.state_dict().keys()
    assert all(type(t) is torch.Tensor and torch.equal(t, reference.state_dict()[k]) for k, t in state.items())

    opt = _adam_step(model)
    trained, optim_state = _plain(D.full_model_state(model)), D.full_optimizer_state(model, opt)
    fresh = sharded(1)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    # a trainable-only checkpoint (save_trainable_only): the embeddings stay as they are
    partial = {k: v for k, v in trained.items() if "embed_tokens" not in k}
    kept = _plain(D.full_model_state(fresh))
    with pytest.raises(ConfigError, match="lm_head.extra"):             # a foreign name is refused, as unsharded
        D.load_full_state(fresh, fresh_opt, {**_plain(partial), "lm_head.extra": torch.zeros(1)}, optim_state)
    assert all(torch.equal(t, kept[k]) for k, t in D.full_model_state(fresh).items())   # and nothing was loaded
    D.load_full_state(fresh, fresh_opt, _plain(partial), optim_state)   # a copy: the load fills the dict in place
    got = D.full_model_state(fresh)
    assert all(torch.equal(got[k], partial[k]) for k in partial)
    assert all(torch.equal(got[k], kept[k]) for k in kept if k not in partial)
    # the optimizer goes on where it stopped: its moments are the saved ones, not zeros
    resumed = D.full_optimizer_state(fresh, fresh_opt)["state"]
    assert resumed and resumed.keys() == optim_state["state"].keys()
    for key, saved in optim_state["state"].items():
        assert torch.equal(resumed[key]["exp_avg"], saved["exp_avg"]) and saved["exp_avg"].abs().sum() > 0


def test_unsharded_resume_restores_the_optimizer_state():
    model = tiny_decoder(0)
    opt = _adam_step(model)
    fresh = tiny_decoder(1)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    D.load_full_state(fresh, fresh_opt, D.full_model_state(model), D.full_optimizer_state(model, opt))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    saved, resumed = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert resumed.keys() == saved.keys() and all(torch.equal(resumed[k]["exp_avg"], saved[k]["exp_avg"])
                                                  for k in saved)


def test_barrier_and_teardown_run_on_every_rank(monkeypatch):
    D.barrier(), D.teardown()                       # no group: both are no-ops, not errors
    calls = []
    monkeypatch.setattr(D.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(D.dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(D.dist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(D.dist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    D.barrier()
    assert calls == ["barrier"]                     # rank 1 waits too: a barrier only rank 0 enters is none
    D.teardown()
    assert calls == ["barrier", "barrier", "destroy"]   # nobody leaves while another rank still talks to it
