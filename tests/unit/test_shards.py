"""Webdataset-style tar shards (data/shards.py, train/shard_loader.py): brace patterns, the split of shards over
ranks and loader workers (disjoint, complete), the seeded shuffle buffer, a resumed loader that continues with
exactly the samples an uninterrupted one takes next (in-process and with 2 worker processes), bad samples named
or skipped, and CLIP trained from a shard set through `ocellus train`, interrupted and resumed to the same losses."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ocellus.cli import main as cli_main
from ocellus.data.shapes import ShapesConfig, caption, make_scene, render
from ocellus.data.shards import (ShardStream, expand_braces, shard_paths, shuffled, split_shards, stream,
                                 tar_samples)
from ocellus.errors import ConfigError, InputError
from ocellus.train.shard_loader import ShardLoader

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHARDS, PER_SHARD = 4, 6


def _member(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, shards: int = SHARDS, per_shard: int = PER_SHARD, size: int = 32) -> list[str]:
    """shard-000.tar ...: per sample `<key>.png` + `<key>.txt` (odd samples: `<key>.json` {"caption"}), the
    caption of the scene drawn in the image. -> every key, in writing order."""
    cfg = ShapesConfig(image_size=size, seed=7, min_size=0.2, min_objects=1, max_objects=1)
    keys = []
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for j in range(per_shard):
                key = f"s{s}-{j:03d}"
                scene = make_scene(np.random.default_rng([cfg.seed, s, j]), cfg)
                buf = io.BytesIO()
                render(scene).save(buf, format="PNG")
                _member(tar, f"{key}.png", buf.getvalue())
                text = caption(scene)
                if j % 2:
                    _member(tar, f"{key}.json", json.dumps({"caption": text}).encode())
                else:
                    _member(tar, f"{key}.txt", text.encode())
                keys.append(key)
    return keys


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return root, write_shards(root)


def key_of(sample):
    return sample["__key__"]


def test_brace_patterns_and_shard_paths(shard_dir):
    root, _ = shard_dir
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]
    every = [root / f"shard-{i:03d}.tar" for i in range(SHARDS)]
    assert shard_paths(f"{root}/shard-{{000..003}}.tar") == every == shard_paths(str(root))
    assert shard_paths([f"{root}/shard-{{002..003}}.tar", f"{root}/shard-000.tar"]) == [every[0], *every[2:]]
    with pytest.raises(ConfigError, match=r"data.urls: shard .*shard-004.tar does not exist"):
        shard_paths(f"{root}/shard-{{000..004}}.tar")


def test_tar_samples_group_members_by_key(shard_dir):
    root, keys = shard_dir
    samples = list(tar_samples(root / "shard-001.tar"))
    assert [s["__key__"] for s in samples] == keys[PER_SHARD:2 * PER_SHARD]
    assert set(samples[0]) == {"__key__", "__shard__", "png", "txt"} and set(samples[1]) >= {"png", "json"}


def test_split_over_ranks_and_workers_is_disjoint_and_complete():
    shards = [f"s{i}" for i in range(10)]
    parts = {(r, w): split_shards(shards, r, 2, w, 2) for r in range(2) for w in range(2)}
    flat = [s for p in parts.values() for s in p]
    assert sorted(flat) == sorted(shards) and len(flat) == len(set(flat))
    for r in range(2):   # a rank's workers share out exactly the rank's shards
        assert sorted(parts[(r, 0)] + parts[(r, 1)]) == sorted(shards[r::2])
    assert parts[(0, 0)] == ["s0", "s4", "s8"] and parts[(1, 1)] == ["s3", "s7"]
    with pytest.raises(ConfigError, match=r"10 shards, fewer than ranks x loader workers = 4 x 3"):
        split_shards(shards, 0, 4, 0, 3)


def test_shuffle_buffer_is_a_seeded_permutation():
    import random
    items = list(range(50))
    a = list(shuffled(iter(items), 8, random.Random(1)))
    assert sorted(a) == items and a != items
    assert a == list(shuffled(iter(items), 8, random.Random(1)))
    assert a != list(shuffled(iter(items), 8, random.Random(2)))
    assert list(shuffled(iter(items), 1, random.Random(1))) == items
    # a sample leaves the buffer at most `size` - 1 + its wait places late: it is a local shuffle
    assert all(a.index(x) >= x - 7 for x in items)


def test_stream_reads_each_sample_once_per_epoch_in_a_new_order(shard_dir):
    root, keys = shard_dir
    mine = shard_paths(str(root))
    samples = _take(stream(mine, 0, 0, 0, 5), 2 * len(keys))
    first = [s["__key__"] for s in samples]
    assert sorted(first[:len(keys)]) == sorted(keys) == sorted(first[len(keys):])
    assert [s["__epoch__"] for s in samples] == [0] * len(keys) + [1] * len(keys)   # MoCo seeds its views by it
    assert first[:len(keys)] != first[len(keys):] != keys


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_ranks_read_disjoint_shards_and_workers_their_own_part(shard_dir):
    root, keys = shard_dir
    shards = shard_paths(str(root))
    seen = {}
    for rank in range(2):
        loader = ShardLoader(shards, 3, key_of, list, seed=0, buffer=4, num_workers=0, rank=rank, world_size=2)
        seen[rank] = [k for _ in range(4) for k in loader.next_raw()]     # one epoch of the rank's 2 shards
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(keys)
    assert {k.split("-")[0] for k in seen[0]} == {"s0", "s2"}
    # two workers of one rank: batch k comes from logical worker k % 2, which reads its own shards
    stream_ = ShardStream(shards, 3, key_of, buffer=4, workers=2)
    for worker, own in ((0, {"s0", "s2"}), (1, {"s1", "s3"})):
        got = [k for _, batch in zip(range(4), stream_.batches(worker)) for k in batch["items"]]
        assert {k.split("-")[0] for k in got} == own


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_continues_with_the_next_unseen_samples(shard_dir, workers):
    root, _ = shard_dir
    shards = shard_paths(str(root))
    make = lambda: ShardLoader(shards, 3, key_of, list, seed=5, buffer=4, num_workers=workers)   # noqa: E731
    whole = make()
    uninterrupted = [whole.next_raw() for _ in range(11)]        # past one epoch of every stream (24 samples)
    for stop in (3, 4):                                          # the next batch from either worker
        first = make()
        before = [first.next_raw() for _ in range(stop)]
        state = json.loads(json.dumps(first.state_dict()))       # through state.json
        resumed = make()
        resumed.load_state_dict(state)
        after = [resumed.next_raw() for _ in range(11 - stop)]
        assert before + after == uninterrupted, stop
    other = ShardLoader(shards, 3, key_of, list, seed=5, buffer=8, num_workers=workers)
    with pytest.raises(ConfigError, match=r"made with data.shuffle_buffer = 4, this run has 8"):
        other.load_state_dict(state)


def test_bad_samples_are_named_or_skipped_and_counted(tmp_path):
    write_shards(tmp_path, shards=1, per_shard=4)
    with tarfile.open(tmp_path / "shard-000.tar", "a") as tar:
        _member(tar, "broken.png", b"not a png")
        _member(tar, "broken.txt", b"a red circle")
        _member(tar, "nocap.png", b"\x89PNG")                    # no .txt / .json
    from ocellus.data.shards import ImageText
    from ocellus.train.recipe_data import image_config
    shards = shard_paths(str(tmp_path))
    loader = ShardLoader(shards, 6, ImageText(image_config(16)), list)
    with pytest.raises(InputError, match=r"shard-000.tar, sample 'broken': .*not an image"):
        loader.next_raw()
    loader = ShardLoader(shards, 6, ImageText(image_config(16)), list, skip_bad=True)
    assert len(loader.next_raw()) == 4
    assert loader.report.counts() == {"bad_image": 1, "invalid_record": 1}


CLIP = ["train.progress=false", "train.log_every=1", "train.warmup_steps=0", "train.min_lr_ratio=1.0",
        "train.batch_size=4", "data.source=shards", "data.shuffle_buffer=4", "data.num_workers=2", "eval=null",
        "tokenizer.train_bpe.corpus_n=100", "tokenizer.train_bpe.vocab_size=300",
        "model.vision={image_size: 16, patch_size: 4, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
        "num_attention_heads: 2}",
        "model.text={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, "
        "max_position_embeddings: 32}"]


def _losses(out: Path) -> dict:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_clip_trains_from_shards_and_resumes_to_the_same_losses(shard_dir, tmp_path, capsys):
    root, _ = shard_dir
    recipe, urls = str(RECIPES / "clip_tiny_shapes" / "clip.yaml"), f"data.urls={root}/shard-{{000..003}}.tar"
    whole = tmp_path / "whole"
    assert cli_main(["train", recipe, *CLIP, urls, f"train.out_dir={whole}", "train.max_steps=6"]) == 0
    assert "rank 0 of 1 reads 4 of 4 shards: shard-000.tar, shard-001.tar, shard-002.tar" in capsys.readouterr().err
    cut = tmp_path / "cut"
    cli_main(["train", recipe, *CLIP, urls, f"train.out_dir={cut}", "train.max_steps=3"])
    cli_main(["train", recipe, *CLIP, urls, f"train.out_dir={cut}", "train.max_steps=6", "train.resume=true"])
    expected, got = _losses(whole), _losses(cut)
    assert sorted(got) == list(range(1, 7))
    assert [got[s] for s in range(1, 7)] == pytest.approx([expected[s] for s in range(1, 7)], rel=1e-6, abs=1e-7)
    state = json.loads((cut / "checkpoints" / "step-000006" / "state.json").read_text())["data"]
    assert state["kind"] == "shards" and state["batches"] == 6 and state["workers"] == 2
