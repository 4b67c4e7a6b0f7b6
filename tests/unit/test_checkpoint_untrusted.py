"""A checkpoint directory is untrusted input: a config that is not a JSON object is a CheckpointError naming
the file wherever checkpoints are opened; files resolving outside the directory are refused; an unknown
model_type is a ConfigError naming it."""
import json
import os
import shutil

import pytest
import torch

import ocellus
from ocellus.data.bpe import train_bpe
from ocellus.data.processor import Processor
from ocellus.errors import CheckpointError, ConfigError
from ocellus.hub.families import FAMILIES, MODEL_TYPES, import_piece
from ocellus.models.families.vit.checkpoint import load_vision
from ocellus.models.generative.checkpoint import load_generator
from ocellus.models.unified.checkpoint import is_unified_dir, load_unified

NOT_OBJECTS = {"list": "[1, 2]", "string": '"llama"', "malformed": '{"architectures": ["LlamaForCausalLM"',
               "number": "3"}
PREPROCESSOR = {"image_processor_type": "CLIPImageProcessor", "size": {"height": 16, "width": 16},
                "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["a circle", "a square"] * 10, 300)


@pytest.fixture
def ckpt(llama_dir, tmp_path, tokenizer):
    dst = tmp_path / "ckpt"
    shutil.copytree(llama_dir, dst)
    tokenizer.save(dst)     # so a processor that reads the tokenizer first gets to config.json
    return dst


def _openers():
    """Every way a checkpoint directory is opened: load, load_processor, each family's processor_from_dir,
    the vision-tower, generator and unified loaders."""
    openers = {"ocellus.load": ocellus.load, "load_processor": ocellus.load_processor,
               "Processor.from_dir": Processor.from_dir, "load_vision": load_vision,
               "load_generator": load_generator, "load_unified": load_unified}
    for module in sorted({r.processor for r in FAMILIES.values() if r.processor}):
        name = next(r.name for r in FAMILIES.values() if r.processor == module)
        openers[name + ".processor_from_dir"] = import_piece(module, "processor").processor_from_dir
    return openers


@pytest.mark.parametrize("content", NOT_OBJECTS.values(), ids=NOT_OBJECTS.keys())
@pytest.mark.parametrize("opener", _openers().keys())
def test_config_that_is_not_an_object_is_a_checkpoint_error_naming_it(ckpt, opener, content):
    (ckpt / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))   # the processors get past it
    (ckpt / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match="config.json"):
        _openers()[opener](ckpt)
    assert not is_unified_dir(ckpt)


def test_load_unified_refuses_a_complete_checkpoint_of_another_model(ckpt):
    """load_unified needs BOTH a unified config.json and model.safetensors: a whole Llama directory (weights
    there, another model_type) is refused by name, not loaded as the Llama it is."""
    with pytest.raises(CheckpointError, match="not a unified-model checkpoint"):
        load_unified(ckpt)


@pytest.mark.parametrize("content", ["[]", "{"])
def test_processor_config_that_is_not_an_object_is_a_checkpoint_error(ckpt, content):
    (ckpt / "preprocessor_config.json").write_text(content)
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        ocellus.load_processor(ckpt)


@pytest.mark.parametrize("index", [[], {"weight_map": ["model.safetensors"]}, {"weight_map": {"a": 1}}, {}])
def test_malformed_index_is_a_checkpoint_error(ckpt, index):
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.safetensors.index.json"):
        ocellus.load(ckpt)


def _sharded(llama_dir, path):
    ocellus.save(ocellus.load(llama_dir), path, max_shard_bytes=40_000)
    return json.loads((path / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize("escape", ["dotdot", "absolute"])
def test_index_naming_a_shard_outside_the_directory_is_refused(llama_dir, tmp_path, escape):
    ckpt = tmp_path / "ckpt"
    index = _sharded(llama_dir, ckpt)
    key, shard = next(iter(index["weight_map"].items()))
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(ckpt / shard, outside)          # a real, readable file: only where it lies is wrong
    index["weight_map"] = {k: ("../elsewhere.safetensors" if escape == "dotdot" else str(outside)) if v == shard
                           else v for k, v in index["weight_map"].items()}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        ocellus.load(ckpt)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_symlink_out_of_the_directory_is_refused(ckpt, tmp_path, name):
    target = tmp_path / f"secret-{name}"
    (ckpt / name).rename(target)
    os.symlink(target, ckpt / name)
    with pytest.raises(CheckpointError, match=f"{name}.*outside the checkpoint directory"):
        ocellus.load(ckpt)


def test_symlinks_inside_the_directory_and_the_hub_cache_layout_load(ckpt, tmp_path):
    """snapshots/<rev>/file -> ../../blobs/<hash>, as huggingface_hub writes the cache, stays allowed."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snap, blobs = repo / "snapshots" / ("a" * 40), repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in ckpt.iterdir():
        shutil.copy(f, blobs / f.name)
        os.symlink(f"../../blobs/{f.name}", snap / f.name)
    ids = torch.randint(0, 97, (1, 5))
    torch.testing.assert_close(ocellus.load(snap)(ids).logits, ocellus.load(ckpt)(ids).logits)
    (ckpt / "model.safetensors").rename(ckpt / "weights.bin")
    os.symlink("weights.bin", ckpt / "model.safetensors")           # a link within the directory
    ocellus.load(ckpt)


def test_unknown_model_type_is_a_config_error_listing_the_known_ones(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "llamma"}))
    with pytest.raises(ConfigError, match=r"unknown model_type 'llamma'; known: \[.*'llama'.*'llava'"):
        ocellus.load(ckpt)
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "ocellus_unified"}))
    with pytest.raises(ConfigError, match=r"model_type 'ocellus_unified' belongs to family 'unified' but "
                                          r"architectures \['LlamaForCausalLM'\]"):
        ocellus.load(ckpt)


def test_every_family_model_type_is_known():
    for module in {m for r in FAMILIES.values() for m in (r.modeling, r.processor) if m}:
        assert set(getattr(import_piece(module, "modeling"), "MODEL_TYPES", ())) <= MODEL_TYPES, module
