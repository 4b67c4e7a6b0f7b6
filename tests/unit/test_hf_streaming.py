"""Hugging Face datasets streamed (data.streaming: true; data/hf_stream.py, train/hf_data.HFStreamLoader):
local parquet files read with `streaming=True` (no arrow cache written), every row once per epoch through a
seeded shuffle buffer, ranks and loader workers each their own batches, and a resumed loader that continues with
exactly the rows an uninterrupted one takes next (in-process and with 2 worker processes); a reward model
trained from a streamed parquet file, cut and resumed, gives the uninterrupted run's losses."""
import json
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from ocellus.errors import ConfigError, InputError  # noqa: E402
from ocellus.train.hf_data import HFStreamLoader  # noqa: E402
from ocellus.train.tasks import load_recipe, run_recipe  # noqa: E402
from test_data_formats import ALIGN, POST, RECIPES, _small, built, llava_data, posttrain_rows  # noqa: E402,F401  (fixtures)

ROWS, FILES = 30, 2
datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A directory in the HF hub layout: train-0000{0,1}-of-00002.parquet, rows {"id": "r<k>", "prompt", "answer"}."""
    root = tmp_path_factory.mktemp("stream")
    per = ROWS // FILES
    for f in range(FILES):
        ids = [f"r{k}" for k in range(f * per, (f + 1) * per)]
        datasets.Dataset.from_dict({"id": ids, "prompt": [f"how many in {i}?" for i in ids],
                                    "answer": [str(len(i)) for i in ids]}).to_parquet(
            str(root / f"train-{f:05d}-of-{FILES:05d}.parquet"))
    return root


def where(row):
    return row.values["id"]


def _loader(root, batch=4, buffer=6, workers=0, rank=0, world=1, cache=None, **data):
    data = {"source": "hf", "streaming": True, "path": str(root), "shuffle_buffer": buffer, "num_workers": workers,
            **({"cache_dir": str(cache)} if cache else {}), **data}
    return HFStreamLoader(data, batch, where, list, seed=3, rank=rank, world_size=world)


def test_an_epoch_reads_every_row_once_shuffled_and_writes_no_cache(table, tmp_path):
    loader = _loader(table, batch=5, cache=tmp_path / "cache")
    assert [f.name for f in loader.files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    first = [k for _ in range(ROWS // 5) for k in loader.next_raw()]
    second = [k for _ in range(ROWS // 5) for k in loader.next_raw()]
    every = [f"r{k}" for k in range(ROWS)]
    assert sorted(first) == sorted(every) == sorted(second)
    assert first != every and first != second                     # shuffled, and anew each epoch
    assert not list((tmp_path / "cache").rglob("*.arrow"))        # streamed: nothing materialised
    # buffer 1 and data.n: the first n rows of the sorted files, in order
    first_n = _loader(table, batch=4, buffer=1, n=6)
    assert [k for _ in range(3) for k in first_n.next_raw()] == every[:6] + every[:6]
    # data.n keeps the files in order: the buffer alone, reseeded every epoch, makes each epoch's order
    first_n = _loader(table, batch=6, buffer=4, n=12)
    one, two = ([k for _ in range(2) for k in first_n.next_raw()] for _ in range(2))
    assert sorted(one) == sorted(two) == sorted(every[:12]) and one != two


def test_ranks_take_disjoint_batches_of_one_stream(table):
    whole = _loader(table, batch=3)
    batches = [whole.next_raw() for _ in range(8)]
    ranks = [_loader(table, batch=3, rank=r, world=2) for r in range(2)]
    got = [[r.next_raw() for _ in range(4)] for r in ranks]
    assert got[0] == batches[0::2] and got[1] == batches[1::2]
    # 2 ranks x 2 workers: worker w of rank r makes the global batches r + 2w, r + 2w + 4, ...
    from ocellus.data.hf_stream import HFStream
    for r in range(2):
        for w in range(2):
            stream = HFStream(ranks[r].data, ranks[r].files, 3, where, seed=3, buffer=6, rank=r, world=2, workers=2)
            made = [b["items"] for _, b in zip(range(2), stream.batches(w))]
            assert made == batches[r + 2 * w::4], (r, w)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_with_the_next_unseen_rows(table, workers):
    make = lambda: _loader(table, batch=4, workers=workers)   # noqa: E731
    whole = make()
    uninterrupted = [whole.next_raw() for _ in range(10)]      # past one epoch (30 rows)
    in_process = _loader(table, batch=4)
    assert uninterrupted == [in_process.next_raw() for _ in range(10)]   # the workers' turn: the one stream in order
    for stop in (3, 4):
        first = make()
        before = [first.next_raw() for _ in range(stop)]
        state = json.loads(json.dumps(first.state_dict()))
        resumed = make()
        resumed.load_state_dict(state)
        after = [resumed.next_raw() for _ in range(10 - stop)]
        assert before + after == uninterrupted, stop
    with pytest.raises(ConfigError, match=r"made with data.shuffle_buffer = 6, this run has 8"):
        _loader(table, batch=4, buffer=8, workers=workers).load_state_dict(state)


def test_a_given_iterable_dataset_streams(table):
    """run_recipe(recipe, dataset=ds) with a datasets.IterableDataset (or an IterableDatasetDict: data.split
    picks): one stream, streamed without data.streaming, each row once per epoch."""
    from ocellus.data.hf_dataset import given
    from ocellus.data.hf_stream import streaming
    ds = datasets.load_dataset("parquet", data_files=sorted(str(f) for f in table.glob("*.parquet")), streaming=True)
    with given(ds):
        data = {"source": "hf", "split": "train", "shuffle_buffer": 4}
        assert streaming(data) is False                       # a dict of splits: data.streaming says it
        loader = HFStreamLoader({**data, "streaming": True}, 5, where, list, seed=0)
        assert sorted(k for _ in range(ROWS // 5) for k in loader.next_raw()) == sorted(f"r{k}" for k in range(ROWS))
    with given(ds["train"]):
        assert streaming({"source": "hf"}) is True
        assert len(HFStreamLoader({"source": "hf"}, 5, where, list).next_raw()) == 5


def test_bad_rows_are_named_or_skipped(tmp_path):
    datasets.Dataset.from_dict({"prompt": ["a", "b", "c"], "chosen": ["x", "y", "z"],
                                "rejected": ["x2", "y", "z2"]}).to_parquet(str(tmp_path / "p.parquet"))
    from ocellus.train.hf_data import stream_loader
    recipe = {"task": "rm", "seed": 0, "data": {"source": "hf", "streaming": True, "path": str(tmp_path / "p.parquet")}}
    with pytest.raises(InputError, match=r"p.parquet, row 1: .*chosen"):
        stream_loader(recipe, ("preference",), 3, list).next_raw()
    recipe["data"]["skip_bad_samples"] = True
    loader = stream_loader(recipe, ("preference",), 3, list)
    assert [p.chosen for p in loader.next_raw()] == ["x", "z"] and loader.report.counts() == {"invalid_sample": 1}
    with pytest.raises(ConfigError, match=r"data.format preference: task grpo reads prompt rows"):
        stream_loader({**recipe, "task": "grpo"}, ("prompt",), 3, list)


def test_streaming_keys_are_checked():
    base = ["data.source=hf", "data.path=x.parquet"]
    with pytest.raises(ConfigError, match=r"data.shuffle_buffer is read by a streamed dataset"):
        load_recipe(RECIPES / "posttrain" / "rm.yaml", base + ["data.shuffle_buffer=8"])
    with pytest.raises(ConfigError, match=r"data.streaming is read with data.source hf only"):
        load_recipe(RECIPES / "posttrain" / "rm.yaml", ["data.streaming=true"])
    with pytest.raises(ConfigError, match=r"data.streaming must be"):
        load_recipe(RECIPES / "posttrain" / "rm.yaml", base + ["data.streaming=often"])


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_reward_model_trains_from_a_streamed_parquet_and_resumes_to_the_same_losses(posttrain_rows, tmp_path):
    root, _, _ = posttrain_rows
    args = POST + [f"data.path={root / 'pairs.parquet'}", "data.streaming=true", "data.shuffle_buffer=4",
                   "train.batch_size=2", "data.n=6", "train.min_lr_ratio=1.0"]   # constant lr: cut runs see the same
    run = lambda out, steps, *more: run_recipe(load_recipe(   # noqa: E731
        RECIPES / "posttrain" / "rm.yaml", args + [f"train.out_dir={out}", f"train.max_steps={steps}", *more]))
    run(tmp_path / "whole", 4)
    run(tmp_path / "cut", 2)
    run(tmp_path / "cut", 4, "train.resume=true")
    whole, cut = _losses(tmp_path / "whole"), _losses(tmp_path / "cut")
    assert len(cut) == 4 and cut == pytest.approx(whole, rel=1e-5, abs=1e-6)
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-000004" / "state.json").read_text())["data"]
    assert state["kind"] == "hf_stream" and state["batches"] == 4 and state["n"] == 6


def test_vlm_streams_llava_rows_as_the_map_style_reader_encodes_them(llava_data, built, tiny_vlm_parts, tmp_path):
    """Task vlm through run_trainer's streamed loader (its sample_data hook): with buffer 1 the rows come in file
    order and encode exactly as the map-style dataset's; `ocellus train` runs 2 steps on the stream."""
    from ocellus.cli import main as cli_main
    from ocellus.train.distributed import DistInfo
    from ocellus.train.hf_data import trainer_stream_loader
    from ocellus.train.tasks import build_dataset, task_module
    recipe, tok, model = built
    path = str(llava_data["root"] / "llava.parquet")
    data = {**recipe["data"], "source": "hf", "path": path}
    reference, _ = build_dataset({**recipe, "data": data}, tok, model)
    loader = trainer_stream_loader({**recipe, "data": {**data, "streaming": True, "shuffle_buffer": 1}},
                                   task_module("vlm"), tok, model, 4, DistInfo())
    got = [s for _ in range(3) for s in loader.next_raw()]
    for i, sample in enumerate(got):
        assert sample["enc"].input_ids == reference[i]["enc"].input_ids
        assert sample["enc"].labels == reference[i]["enc"].labels
    out = tmp_path / "cli"
    assert cli_main(["train", str(ALIGN), *_small(tiny_vlm_parts, out, "data.source=hf", f"data.path={path}",
                                                   "data.streaming=true", "data.shuffle_buffer=4")]) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
