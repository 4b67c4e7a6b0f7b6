"""Strict checkpoint loading: every problem is a typed error naming it; hub ids resolve through
the local Hugging Face cache; saving is atomic and sharded with an index."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import ocellus
from ocellus.errors import CheckpointError, ConfigError


@pytest.fixture
def ckpt(llama_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(llama_dir, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(path, fn):
    f = path / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f)


def test_unknown_architecture(ckpt):
    _edit_config(ckpt, architectures=["MambaForCausalLM"])
    with pytest.raises(ConfigError, match="unknown architecture \\['MambaForCausalLM'\\].*LlamaForCausalLM"):
        ocellus.load(ckpt)


def test_unknown_rope_type(ckpt):
    _edit_config(ckpt, rope_parameters={"rope_type": "spiral", "rope_theta": 1e4})
    with pytest.raises(ConfigError, match="unknown rope type 'spiral'"):
        ocellus.load(ckpt)


def test_missing_unexpected_and_mismatched_keys_listed_together(ckpt):
    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
        t["model.norm.weight"] = torch.zeros(3)
    _edit_tensors(ckpt, edit)
    with pytest.raises(CheckpointError) as e:
        ocellus.load(ckpt)
    msg = str(e.value)
    assert "missing (1): model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected (1): model.layers.0.self_attn.extra.weight" in msg
    assert "model.norm.weight: checkpoint (3,) vs model (64,)" in msg


def test_truncated_safetensors(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        ocellus.load(ckpt)


def test_garbage_safetensors(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read"):
        ocellus.load(ckpt)


def test_missing_files(ckpt, tmp_path):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        ocellus.load(ckpt)
    with pytest.raises(CheckpointError, match="no config.json"):
        ocellus.load(tmp_path)                       # a dir without config.json
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        ocellus.load(tmp_path / "nope")


def test_index_naming_missing_shard(llama_dir, tmp_path):
    model = ocellus.load(llama_dir)
    ocellus.save(model, tmp_path, max_shard_bytes=40_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=f"missing from .*{shards[1].name}"):
        ocellus.load(tmp_path)


def test_tied_checkpoint_has_no_lm_head(qwen2_dir, tmp_path):
    model = ocellus.load(qwen2_dir)
    assert model.lm_head.weight is model.embed_tokens.weight
    ocellus.save(model, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    assert not list(tmp_path.glob("*.tmp"))          # atomic writes leave no temporaries


def test_bad_dtype(llama_dir):
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        ocellus.load(llama_dir, dtype="float8")


def test_hub_id_resolves_from_local_cache(llama_dir, tmp_path, monkeypatch):
    """A hub id found in the HF cache layout (models--org--name/snapshots/<rev>) loads offline."""
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    snap = cache / "models--tiny-org--tiny-llama" / "snapshots" / ("a" * 40)
    shutil.copytree(llama_dir, snap)
    (cache / "models--tiny-org--tiny-llama" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-llama" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    model = ocellus.load("tiny-org/tiny-llama")
    ids = torch.randint(0, 97, (1, 5))
    assert torch.equal(model(ids).logits, ocellus.load(llama_dir)(ids).logits)
    with pytest.raises(CheckpointError, match="'tiny-org/absent' is not a local directory and is not in the Hugging Face cache.*offline"):
        ocellus.load("tiny-org/absent")
