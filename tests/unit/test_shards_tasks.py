"""The other objectives on tar shards through the one shard loader (train/shard_loader.py + each task's
`shard_data` hook): MoCo (two views seeded by key and epoch), ALBEF and BLIP ((image, caption) pairs as CLIP's),
and VLM SFT (an image + a conversation .json per sample). Each trains a few steps from the shards through
`ocellus train`, is cut and resumed to the same losses, and its samples are the shards' own: a VLM sample read
from a shard encodes exactly as the same record read from LLaVA JSON."""
import json
import tarfile
from pathlib import Path

import pytest
import torch

from ocellus.cli import main as cli_main
from ocellus.data.llava_json import write_llava_json
from ocellus.data.shapes import ShapesConfig
from ocellus.errors import ConfigError, InputError
from ocellus.train.run import build_tokenizer
from ocellus.train.tasks import build_dataset, build_model, load_recipe, task_module
from test_shards import _member, write_shards

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
VISION = ("model.vision={image_size: 16, patch_size: 4, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 1, "
          "num_attention_heads: 2}")
TEXT = ("model.text={hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 2, "
        "max_position_embeddings: 32}")
COMMON = ["train.progress=false", "train.log_every=1", "train.warmup_steps=0", "train.batch_size=4", "eval=null",
          "data.source=shards", "data.shuffle_buffer=4"]
TASKS = {
    "moco": ("moco_tiny_shapes/moco.yaml", [VISION, "model.moco={dim: 16, queue_size: 16, momentum: 0.9}",
                                            "data.augment={scale: [0.5, 1.0], hue: 0.0}"]),
    "albef": ("albef_tiny_shapes/pretrain.yaml", [VISION, TEXT, "model.align.embed_dim=16", "model.align.queue_size=16",
                                                  "model.align.queue_start_step=0", "model.align.text_layers=1",
                                                  "tokenizer.train_bpe.corpus_n=100"]),
    "blip": ("blip_tiny_shapes/pretrain.yaml", [VISION, TEXT, "model.align.embed_dim=16", "model.align.queue_size=16",
                                                "model.align.queue_start_step=0", "tokenizer.train_bpe.corpus_n=100"]),
}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("task_shards")
    return root, write_shards(root)


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def _train(recipe: str, args: list[str], out: Path, steps: int, resume: bool = False) -> None:
    assert cli_main(["train", str(RECIPES / recipe), *args, f"train.out_dir={out}", f"train.max_steps={steps}",
                     *(["train.resume=true"] if resume else [])]) == 0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_objective_trains_from_shards_and_resumes_at_its_position(task, shard_dir, tmp_path, capsys):
    """`ocellus train` on shards, cut after 1 step and resumed to 3; the resumed loader (the task's own decode
    and collate, behind the position in the checkpoint) gives exactly the batches 2 and 3 of an uninterrupted
    one: the same images, views and captions. (The losses are not compared: train.save_trainable_only, the
    default, leaves the momentum encoders and queues out of the checkpoint.)"""
    from ocellus.train.distributed import DistInfo
    from ocellus.train.shard_loader import shard_loader
    root, _ = shard_dir
    recipe, extra = TASKS[task]
    workers = "data.num_workers=2" if task == "moco" else "data.num_workers=0"
    args = [*COMMON, *extra, f"data.urls={root}", workers]
    _train(recipe, args, tmp_path / "cut", 1)
    assert "rank 0 of 1 reads 4 of 4 shards" in capsys.readouterr().err   # a message: stderr
    _train(recipe, args, tmp_path / "cut", 3, resume=True)
    assert [r["step"] for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    assert all(loss == loss for loss in _losses(tmp_path / "cut"))
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-000001" / "state.json").read_text())["data"]
    assert state["kind"] == "shards" and state["batches"] == 1

    built = _built(task, root, tmp_path, workers)
    make = lambda: shard_loader(built[0], task_module(task), *built[1:], 4, DistInfo())   # noqa: E731
    whole = make()
    expected = [whole.next_batch() for _ in range(3)]
    resumed = make()
    resumed.load_state_dict(state)
    for want in expected[1:]:
        got = resumed.next_batch()
        for key, value in want.items():
            assert torch.equal(got[key], value) if torch.is_tensor(value) else got[key] == value, key
    assert not torch.equal(expected[1]["pixel_values"], expected[2]["pixel_values"])


def _built(task: str, root: Path, tmp_path: Path, *extra):
    recipe, args = TASKS[task]
    recipe = load_recipe(RECIPES / recipe, [*COMMON, *args, f"data.urls={root}", f"train.out_dir={tmp_path}", *extra])
    tok = build_tokenizer(recipe, tmp_path) if task != "moco" else None
    return recipe, tok, build_model(recipe, tok)


def test_albef_batches_hold_each_shard_image_with_its_own_caption(shard_dir, tmp_path):
    """The pairs a shard gives (read order: buffer 1) collate as build_dataset's pairs of the same images and
    captions: the same pixel rows, the same caption ids, in the same rows."""
    from ocellus.data.shards import caption_of, shard_paths, tar_samples
    from ocellus.data.image import load_image, preprocess
    from ocellus.train.contrastive_run import caption_id, image_cfg
    root, _ = shard_dir
    recipe, tok, model = _built("albef", root, tmp_path, "data.shuffle_buffer=1")
    decode, collate = task_module("albef").shard_data(recipe, tok, model)
    first = list(tar_samples(shard_paths(str(root))[0]))[:4]
    batch = collate([decode(s) for s in first])
    size = model.visual_encoder.config.image_size
    pixels = preprocess([load_image(s["png"]) for s in first], image_cfg(size))
    assert torch.equal(batch["pixel_values"], pixels)
    assert batch["ids"].tolist() == [caption_id(caption_of(s)) for s in first]
    assert len(set(batch["ids"].tolist())) > 1     # the rows differ: a swap would show


def test_moco_views_are_seeded_by_key_and_epoch(shard_dir, tmp_path):
    from ocellus.data.shards import shard_paths, tar_samples
    root, _ = shard_dir
    recipe, tok, model = _built("moco", root, tmp_path)
    decode, collate = task_module("moco").shard_data(recipe, tok, model)
    a, b = list(tar_samples(shard_paths(str(root))[0]))[:2]
    views = decode({**a, "__epoch__": 0})
    assert views.shape[0] == 2 and not torch.equal(views[0], views[1])             # two different views
    assert torch.equal(views, decode({**a, "__epoch__": 0}))                          # the same again
    assert not torch.equal(views, decode({**a, "__epoch__": 1}))                      # new views next pass
    batch = collate([views, decode({**b, "__epoch__": 0})])
    assert batch["pixel_values"].shape == batch["pixel_values_k"].shape == (2, 3, 16, 16)


# ---- VLM SFT: an image + a conversation .json per sample -----------------------------------------------

VLM = ["train.progress=false", "train.batch_size=2", "train.log_every=1", "train.warmup_steps=0",
       "train.min_lr_ratio=1.0",   # a constant lr: a run cut at max_steps=1 has the lr of the whole one
       "data.max_length=192", "data.source=shards", "data.shuffle_buffer=2", "data.num_workers=0"]


def _vlm_args(parts, *extra):
    return [*VLM, f"model.vision_from={parts}/vit/model", f"model.llm_from={parts}/text/model",
            f"tokenizer.from={parts}/text/model", *extra]


@pytest.fixture(scope="module")
def sft_shards(tmp_path_factory):
    """The LLaVA JSON records of 8 shapes QA samples, and the same as 2 shards: `<id>.png` + `<id>.json`
    (the record without its image name; odd ones in TRL's messages form)."""
    from ocellus.data.messages import from_llava, to_trl
    root = tmp_path_factory.mktemp("sft")
    path = write_llava_json(root / "json", ShapesConfig(seed=5), 8, kind="qa")
    records = json.loads(path.read_text())
    for s in range(2):
        with tarfile.open(root / f"sft-{s}.tar", "w") as tar:
            for r in records[s * 4:(s + 1) * 4]:
                _member(tar, f"{r['id']}.png", (root / "json" / r["image"]).read_bytes())
                j = records.index(r)
                body = ({"messages": to_trl(from_llava(r).messages, [None])["messages"]} if j % 2 else
                        {"conversations": r["conversations"]})
                _member(tar, f"{r['id']}.json", json.dumps(body).encode())
    return root, path, records


def test_vlm_conversation_of_a_tar_sample():
    """key.json + key.png; several images as key.0.png, key.1.png, ... in number order (10 after 9)."""
    from ocellus.data.shards import conversation_of
    turns = [{"from": "human", "value": "<image>" * 11 + "Which?"}, {"from": "gpt", "value": "red"}]
    raw = {"__key__": "k", "json": json.dumps({"conversations": turns}).encode(),
           **{f"{i}.png": bytes([i]) for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)}}
    sample = conversation_of(raw)
    assert sample["id"] == "k" and sample["images"] == [bytes([i]) for i in range(11)]
    assert [m["role"] for m in sample["messages"]] == ["user", "assistant"]
    one = conversation_of({"__key__": "j", "png": b"p", "json": json.dumps(
        {"id": "x", "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                                 {"role": "assistant", "content": "a"}]}).encode()})
    assert one["id"] == "x" and one["images"] == [b"p"]
    with pytest.raises(InputError, match=r"no conversation \(.json\)"):
        conversation_of({"__key__": "k", "png": b"p", "txt": b"a caption"})
    with pytest.raises(InputError, match=r"image"):   # 11 placeholders, 1 image
        conversation_of({"__key__": "k", "json": raw["json"], "png": b"p"})


def test_vlm_shard_samples_encode_as_the_llava_json_records(sft_shards, tiny_vlm_parts, tmp_path):
    from ocellus.data.shards import tar_samples
    root, path, records = sft_shards
    recipe = load_recipe(RECIPES / "llava_tiny_shapes" / "align.yaml",
                         _vlm_args(tiny_vlm_parts, f"data.urls={root}/sft-{{0..1}}.tar", f"train.out_dir={tmp_path}"))
    tok = build_tokenizer(recipe, tmp_path)
    model = build_model(recipe, tok)
    decode, collate = task_module("vlm").shard_data(recipe, tok, model)
    reference, _ = build_dataset({**recipe, "data": {**recipe["data"], "source": "llava_json", "path": str(path),
                                                     "n": 8}}, tok, model)
    raws = [s for k in range(2) for s in tar_samples(root / f"sft-{k}.tar")]
    assert [s["__key__"] for s in raws] == [r["id"] for r in records]
    for i, raw in enumerate(raws):
        got, want = decode(raw), reference[i]
        assert got["enc"].input_ids == want["enc"].input_ids and got["enc"].labels == want["enc"].labels
        assert torch.equal(got["images"]["pixel_values"], want["images"]["pixel_values"])
    assert reference[0]["enc"].input_ids != reference[1]["enc"].input_ids   # the records differ: a mix-up shows
    batch = collate([decode(r) for r in raws[:2]])
    assert batch["pixel_values"].shape[0] == 2


def test_vlm_trains_from_shards_and_resumes(sft_shards, tiny_vlm_parts, tmp_path):
    root, _, _ = sft_shards
    recipe = str(RECIPES / "llava_tiny_shapes" / "align.yaml")
    args = _vlm_args(tiny_vlm_parts, f"data.urls={root}/sft-{{0..1}}.tar")
    run = lambda out, steps, *more: cli_main(["train", recipe, *args, f"train.out_dir={out}",   # noqa: E731
                                              f"train.max_steps={steps}", *more])
    assert run(tmp_path / "whole", 3) == 0
    run(tmp_path / "cut", 1)
    run(tmp_path / "cut", 3, "train.resume=true")
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-5, abs=1e-6)
    assert len(_losses(tmp_path / "cut")) == 3


def test_vlm_shard_errors(sft_shards, tiny_vlm_parts, tmp_path):
    root, _, records = sft_shards
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        _member(tar, "x.png", (root / "json" / records[0]["image"]).read_bytes())
        _member(tar, "x.json", json.dumps({"conversations": [{"from": "human", "value": "hi"}]}).encode())
    recipe = load_recipe(RECIPES / "llava_tiny_shapes" / "align.yaml",
                         _vlm_args(tiny_vlm_parts, f"data.urls={tmp_path}/bad.tar", f"train.out_dir={tmp_path}"))
    tok = build_tokenizer(recipe, tmp_path)
    decode, _ = task_module("vlm").shard_data(recipe, tok, build_model(recipe, tok))
    from ocellus.data.shards import tar_samples
    with pytest.raises(InputError, match=r"1 image\(s\)|image"):   # an image but no <image> placeholder
        decode(next(tar_samples(tmp_path / "bad.tar")))
    with pytest.raises(ConfigError, match=r"data.source shards trains task contrastive / moco / albef / blip / vlm"):
        load_recipe(RECIPES / "llava_tiny_shapes" / "vit_pretrain.yaml", ["data.source=shards", "data.urls=a.tar"])
