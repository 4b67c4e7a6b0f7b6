"""CLIP from tar shards under torchrun, 2 CPU processes (gloo): each rank reads its own shards (the line every
rank prints), both train the same steps, and the checkpoint's shard position is the 2-process one."""
import json
import re
import sys
from pathlib import Path

from _launch import launch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_shards import CLIP, write_shards  # noqa: E402

SCRIPT = Path(__file__).with_name("cli_train.py")
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "clip_tiny_shapes" / "clip.yaml"


def test_two_ranks_read_disjoint_shards(tmp_path):
    write_shards(tmp_path / "shards")
    out = tmp_path / "run"
    proc, log = launch(SCRIPT, [str(RECIPE), *CLIP, f"data.urls={tmp_path / 'shards'}/shard-{{000..003}}.tar",
                                f"train.out_dir={out}", "train.max_steps=3", "distributed=ddp"], 2)
    assert proc.returncode == 0, log
    lines = dict(re.findall(r"rank (\d) of 2 reads 2 of 4 shards: (.*)", proc.stderr))
    assert lines == {"0": "shard-000.tar, shard-002.tar", "1": "shard-001.tar, shard-003.tar"}, log
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    state = json.loads((out / "checkpoints" / "step-000003" / "state.json").read_text())["data"]
    assert state["world_size"] == 2 and state["batches"] == 3
