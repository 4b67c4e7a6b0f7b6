"""How tar members become samples and captions (data/shards.py), on the cases the shard-set tests do not write:
a sample key is the member name up to the first dot of its base name (`k.0.png` is key `k`, extension `0.png`)
with its directory kept (`a/1.png` and `b/1.png` are two samples), extensions are lower-cased (`.JPG`), a .json's
"caption" wins over its "text", a caption of whitespace only is bad, and the order of a worker's shards is drawn
again every epoch (with a shuffle buffer of 1 the shard order is all there is to see)."""
import io
import itertools
import json
import tarfile

import pytest

from ocellus.data.bad_samples import BadSample
from ocellus.data.shards import caption_of, conversation_of, stream, tar_samples


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_keys_keep_directories_and_extensions_are_after_the_first_dot(tmp_path):
    path = write_tar(tmp_path / "s.tar", [("a/1.png", b"A"), ("a/1.txt", b"one"), ("b/1.png", b"B"),
                                          ("b/1.txt", b"other"), ("k.0.png", b"P0"), ("k.1.png", b"P1"),
                                          ("k.json", b"{}"), ("up.JPG", b"J"), ("up.TXT", b"upper")])
    samples = list(tar_samples(path))
    assert [s["__key__"] for s in samples] == ["a/1", "b/1", "k", "up"]
    assert (samples[0]["png"], samples[1]["png"]) == (b"A", b"B")
    assert {k: v for k, v in samples[2].items() if not k.startswith("__")} == {"0.png": b"P0", "1.png": b"P1",
                                                                              "json": b"{}"}
    assert {k for k in samples[3] if not k.startswith("__")} == {"jpg", "txt"}


def test_numbered_images_of_a_tar_sample_reach_the_conversation_in_order(tmp_path):
    turns = [{"from": "human", "value": "<image><image>Which?"}, {"from": "gpt", "value": "red"}]
    path = write_tar(tmp_path / "c.tar", [("k.json", json.dumps({"conversations": turns}).encode()),
                                          ("k.0.png", b"first"), ("k.1.png", b"second")])
    (sample,) = tar_samples(path)
    assert conversation_of(sample)["images"] == [b"first", b"second"]


def test_caption_wins_over_text_and_blank_captions_are_bad():
    both = {"__key__": "k", "json": json.dumps({"text": "the text", "caption": " the caption "}).encode()}
    assert caption_of(both) == "the caption"
    assert caption_of({"__key__": "k", "json": json.dumps({"text": "only text"}).encode()}) == "only text"
    assert caption_of({"__key__": "k", "txt": b"  a red circle\n"}) == "a red circle"
    for blank in (b"", b"  \n\t"):
        with pytest.raises(BadSample, match="empty"):
            caption_of({"__key__": "k", "txt": blank})


def test_shard_order_is_drawn_again_every_epoch(tmp_path):
    shards = [write_tar(tmp_path / f"s{i}.tar", [(f"s{i}.txt", b"x")]) for i in range(4)]
    keys = [s["__key__"] for s in itertools.islice(stream(shards, seed=0, rank=0, worker=0, buffer=1), 4 * 6)]
    epochs = [tuple(keys[4 * e:4 * e + 4]) for e in range(6)]
    assert all(sorted(e) == ["s0", "s1", "s2", "s3"] for e in epochs)   # each shard once per epoch
    assert len(set(epochs)) > 1                                          # and not in one fixed order
