"""Sharded safetensors checkpoints (hub/safetensors_io.py) are laid out as Hugging Face lays them out:
the same tensors in the same shards under the same file names, and the index's weight_map and total_size those of
huggingface_hub.split_torch_state_dict_into_shards (what transformers' save_pretrained writes) for any tensors no
larger than the limit. A tensor over the limit opens a shard of its own, never an empty one; a tensor stored in two
shards is an error; tied_aliases finds only true aliases."""
import json

import pytest
import torch
from safetensors import safe_open

from ocellus.errors import CheckpointError
from ocellus.hub.safetensors_io import INDEX, SINGLE, checkpoint_files, read_tensors, tied_aliases, write_tensors


def _tensors(sizes, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return {f"t{i}.weight": torch.randn(n, generator=g).to(dtype) for i, n in enumerate(sizes)}


def _on_disk(path):
    """{file name: [tensor names]} of every safetensors file in path."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            out[f.name] = sorted(st.keys())
    return out


@pytest.mark.parametrize("sizes,dtype,limit", [
    ([25, 25, 25, 25], torch.float32, 200),          # two tensors fill a shard exactly: 2 shards, not 4
    ([10, 40, 7, 43, 50, 1, 49, 3], torch.float32, 200),
    ([30, 30, 30, 30, 30, 30, 30], torch.bfloat16, 120),
    ([5, 5, 5], torch.float32, 1000),                # one file, no index
])
def test_layout_matches_huggingface_hub(tmp_path, sizes, dtype, limit):
    from huggingface_hub import split_torch_state_dict_into_shards
    tensors = _tensors(sizes, dtype)
    write_tensors(tensors, tmp_path, max_shard_bytes=limit)
    ref = split_torch_state_dict_into_shards(tensors, filename_pattern="model{suffix}.safetensors",
                                             max_shard_size=limit)
    assert _on_disk(tmp_path) == {f: sorted(ks) for f, ks in ref.filename_to_tensors.items()}
    if ref.is_sharded:
        index = json.loads((tmp_path / INDEX).read_text())
        assert index["weight_map"] == ref.tensor_to_filename
        assert index["metadata"]["total_size"] == ref.metadata["total_size"]
    else:
        assert not (tmp_path / INDEX).exists() and (tmp_path / SINGLE).exists()
    back = read_tensors(checkpoint_files(tmp_path))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], t) for k, t in tensors.items())


def test_tensor_over_the_limit_gets_a_shard_and_no_shard_is_empty(tmp_path):
    tensors = {"big.weight": torch.ones(100), "small.weight": torch.ones(2), "last.weight": torch.ones(3)}
    write_tensors(tensors, tmp_path, max_shard_bytes=64)                # big: 400 bytes, over the limit
    index = json.loads((tmp_path / INDEX).read_text())
    files = _on_disk(tmp_path)
    assert all(files.values()), files                                     # no shard without tensors
    assert set(files) == set(index["weight_map"].values())               # every file written is in the index
    assert files["model-00001-of-00002.safetensors"] == ["big.weight"]
    assert files["model-00002-of-00002.safetensors"] == ["last.weight", "small.weight"]
    assert index["metadata"]["total_size"] == 4 * (100 + 2 + 3)


def test_a_tensor_in_two_shards_is_an_error(tmp_path):
    from safetensors.torch import save_file
    save_file({"a": torch.ones(2), "b": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="'a' appears in more than one shard"):
        read_tensors(sorted(tmp_path.glob("*.safetensors")))


def test_tied_aliases_only_for_the_same_view():
    base = torch.randn(6, 4)
    tensors = {
        "embed.weight": base,
        "head.weight": base,                 # the same tensor: an alias
        "top.weight": base[:3],              # same storage, offset 0, another shape: not an alias
        "bottom.weight": base[3:],           # same storage and shape as top, another offset: not an alias
        "empty_a": torch.empty(0),
        "empty_b": torch.empty(0),           # empty tensors hold nothing to share
        "t.weight": base.t(),                # other strides: not an alias
    }
    assert tied_aliases(tensors) == {"head.weight": "embed.weight"}


def test_shards_without_an_index_are_all_read(tmp_path):
    """A directory of several safetensors files and no index (an index lost, a hand-made export): every file's
    tensors, not only the first file's."""
    tensors = _tensors([20, 20, 20, 20])
    write_tensors(tensors, tmp_path, max_shard_bytes=160)      # 80 bytes each: two a shard
    (tmp_path / INDEX).unlink()
    files = checkpoint_files(tmp_path)
    assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    back = read_tensors(files)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], t) for k, t in tensors.items())
