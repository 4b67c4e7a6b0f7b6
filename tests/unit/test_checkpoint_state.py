"""Training checkpoints survive a kill at any moment, and a damaged one is a CheckpointError, not a crash.

A re-save of an existing step must never leave `latest` naming a missing directory (the old code deleted the
named copy before renaming the new one into place); a torn last line of metrics.jsonl (a kill mid-write) must
not block a resume; a malformed state.json names the file and the field."""
import json
import os

import pytest
import torch

from ocellus.errors import CheckpointError
from ocellus.train import state as state_mod
from ocellus.train.loader import BatchLoader
from ocellus.train.state import latest_checkpoint, read_checkpoint, save_checkpoint
from ocellus.train.trainer import TrainConfig, Trainer

from test_trainer import collate, counting_data, tiny_decoder


def _save(root, step, value):
    """A checkpoint whose one tensor holds `value`, so a reader can tell which copy it got."""
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.grad = torch.ones(2)
    opt.step()                                         # a real optimizer state to write and read back
    return save_checkpoint(root, step, {"w": torch.full((2,), float(value))}, opt.state_dict(), None,
                           {"data": {"epoch": 0}})


def _latest_value(root):
    tensors, _, st = read_checkpoint(latest_checkpoint(root))
    return tensors["w"][0].item(), st["step"]


def test_resaving_a_step_switches_latest_before_removing_the_old_copy(tmp_path):
    _save(tmp_path, 4, 1.0)
    path = _save(tmp_path, 4, 2.0)
    assert _latest_value(tmp_path) == (2.0, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", path.name]   # the old copy is gone


@pytest.mark.parametrize("killed_at", [1, 2])
def test_a_kill_during_a_resave_leaves_latest_naming_a_complete_checkpoint(tmp_path, monkeypatch, killed_at):
    """Kill the process at each rename of the re-save (the new copy into place, then `latest`): whatever
    `latest` names must be complete and readable: the old copy before the switch, the new one after."""
    _save(tmp_path, 4, 1.0)
    calls = {"n": 0}
    real_replace = os.replace

    def dying_replace(a, b):
        calls["n"] += 1
        if calls["n"] == killed_at:
            raise KeyboardInterrupt("killed")
        return real_replace(a, b)
    monkeypatch.setattr(state_mod.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 4, 2.0)
    monkeypatch.setattr(state_mod.os, "replace", real_replace)
    assert _latest_value(tmp_path) == (1.0, 4)       # neither kill point has switched `latest` yet
    path = _save(tmp_path, 4, 3.0)                     # and the next save still works
    assert _latest_value(tmp_path) == (3.0, 4) and latest_checkpoint(tmp_path) == path


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced, order = set(), []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(state_mod.os, "fsync", lambda fd: (synced.add(os.readlink(f"/proc/self/fd/{fd}")
                                                                      if os.path.exists("/proc/self/fd") else fd),
                                                           real_fsync(fd))[1])
    monkeypatch.setattr(state_mod.os, "replace", lambda a, b: (order.append(set(synced)), real_replace(a, b))[1])
    path = _save(tmp_path, 1, 1.0)
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("no /proc to name the synced files")
    before_dir_rename = order[0]
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"):
        assert str(tmp_path / f"{path.name}.tmp" / name) in before_dir_rename
    assert str(tmp_path / "latest.tmp") in order[1]


def test_resume_drops_a_torn_last_metrics_line(tmp_path):
    cfg = dict(out_dir=str(tmp_path), progress=False, save_every=2, log_every=1)
    Trainer(tiny_decoder(), BatchLoader(counting_data(), 8, collate), TrainConfig(max_steps=4, **cfg)).fit()
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 5, "lo')                    # the kill came mid-write
    Trainer(tiny_decoder(), BatchLoader(counting_data(), 8, collate),
            TrainConfig(max_steps=6, resume=True, **cfg)).fit()
    logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]


def _damage(tmp_path, edit):
    path = _save(tmp_path, 3, 1.0)
    st = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps(edit(st)))
    return path


@pytest.mark.parametrize("edit, says", [
    (lambda st: [st], "must hold a JSON object, not list"),
    (lambda st: {k: v for k, v in st.items() if k != "step"}, "has no 'step'"),
    (lambda st: {**st, "step": "3"}, "'step' must be a int, not str"),
    (lambda st: {**st, "step": True}, "'step' must be a int, not bool"),
    (lambda st: {**st, "optimizer": None}, "'optimizer' must be a dict"),
    (lambda st: {**st, "optimizer": {"scalars": {}}}, "'param_groups' list"),
    (lambda st: {k: v for k, v in st.items() if k != "data"}, "has no 'data'"),
    (lambda st: {**st, "scheduler": [1]}, "'scheduler' must be an object"),
    (lambda st: {**st, "optimizer": {**st["optimizer"], "scalars": {"no-slash": 1}}}, "do not fit"),
])
def test_malformed_state_json_is_a_checkpoint_error_naming_the_field(tmp_path, edit, says):
    path = _damage(tmp_path, edit)
    with pytest.raises(CheckpointError, match=says) as e:
        read_checkpoint(path)
    assert "state.json" in str(e.value) or str(path) in str(e.value)


def test_a_fresh_run_into_a_used_out_dir_starts_clean(tmp_path):
    """No resume: the earlier run's log and checkpoints are replaced, never appended to (duplicate steps)."""
    cfg = dict(out_dir=str(tmp_path), progress=False, save_every=2, log_every=1)
    Trainer(tiny_decoder(), BatchLoader(counting_data(), 8, collate), TrainConfig(max_steps=6, **cfg)).fit()
    Trainer(tiny_decoder(1), BatchLoader(counting_data(), 8, collate), TrainConfig(max_steps=3, **cfg)).fit()
    logged = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000002", "step-000003"]
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000003"
