"""The family registry (ocellus/hub/families.py): one table, each record naming the module of each piece, imported
on first use; ocellus.load / ocellus.save open every kind the project writes through its one strict path."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import ocellus
from ocellus.errors import ConfigError
from ocellus.hub import families
from ocellus.hub.families import FamilyRecord, import_piece, register, unregister
from ocellus.models.generative.checkpoint import build, load_generator, save_generator
from ocellus.models.unified.checkpoint import build_model, load_unified, save_unified, text_vocab

# what each piece module defines (docs/ADDING_A_MODEL.md)
PIECES = {"checkpoint": ("family",), "modeling": ("compose",),
          "processor": ("processor_from_dir", "training_processor"), "export": ("export_processor",),
          "packing": ("collate_packed",)}
VQ_SPEC = {"kind": "vqvae", "vq": {"in_channels": 3, "channels": 8, "channel_mults": [1, 2], "embed_dim": 4,
                                   "num_codes": 16, "groups": 4}, "class_names": [], "image_size": 16}


def test_every_record_names_modules_that_define_its_pieces():
    for record in families.FAMILIES.values():
        for piece, names in PIECES.items():
            module = getattr(record, piece)
            if module is not None:
                missing = [n for n in names if not hasattr(import_piece(module, piece), n)]
                assert not missing, f"{record.name}: {module} lacks {missing}"
        for arch in record.architectures or (None,):
            fam = families.FamilyRef(record.checkpoint, arch).load()
            assert isinstance(fam, families.Family), (record.name, arch)
        assert set(record.model_types) <= families.MODEL_TYPES
    assert set(families.VLM_FAMILIES) == {"llava", "llava_next", "blip2", "flamingo", "qwen_vl", "qwen2_vl",
                                          "qwen2_5_vl", "internvl", "xgen_mm"}


def test_register_refuses_what_another_family_claims_and_unregister_undoes_it():
    with pytest.raises(ConfigError, match="model_type 'llava' belongs to family 'llava'"):
        register(FamilyRecord("mine", ("llava",)))
    with pytest.raises(ConfigError, match="architecture 'LlamaForCausalLM' belongs to family 'decoder'"):
        register(FamilyRecord("mine", ("mine",), ("LlamaForCausalLM",), checkpoint="x"))
    with pytest.raises(ConfigError, match="recipe name 'qwen2_5_vl' belongs to family 'qwen2_vl'"):
        register(FamilyRecord("qwen2_5_vl", ("mine",), modeling="x"))
    with pytest.raises(ConfigError, match="names architectures but no checkpoint module"):
        register(FamilyRecord("mine", ("mine",), ("MineModel",)))
    with pytest.raises(ConfigError, match="model_types must be a tuple"):
        register(FamilyRecord("mine", "mine"))
    assert "mine" not in families.FAMILIES and "mine" not in families.MODEL_TYPES   # nothing half-registered
    register(FamilyRecord("mine", ("mine",), ("MineModel",), checkpoint="no.such.module", modeling="no.such.module"))
    try:
        assert families.family_module("mine").record.name == "mine" and "mine" in families.MODEL_TYPES
        with pytest.raises(ConfigError, match="names no.such.module as a checkpoint module, and it does not exist"):
            families.family_for_config({"architectures": ["MineModel"], "model_type": "mine"})
    finally:
        unregister("mine")
    assert "MineModel" not in families.ARCHITECTURES and "mine" not in families.MODEL_TYPES
    with pytest.raises(ConfigError, match="unknown vision-language architecture 'mine'"):
        families.family_module("mine")


def test_generators_load_and_save_through_ocellus_in_their_own_format(tmp_path):
    torch.manual_seed(0)
    model = build(dict(VQ_SPEC))
    save_generator(model, tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg == {"model_type": "ocellus_image_generator", **VQ_SPEC}          # the spec format, no dtype added
    back = ocellus.load(tmp_path / "g")
    assert type(back) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    ocellus.save(back, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == cfg
    assert load_generator(tmp_path / "again").state_dict().keys() == model.state_dict().keys()


def test_unified_models_load_and_save_through_ocellus(tmp_path):
    torch.manual_seed(0)
    spec = {"family": "emu3", "dim": 32, "num_layers": 1, "num_heads": 2}
    model = build_model(spec, build(dict(VQ_SPEC)), text_vocab(["red", "blue"]), 16)
    save_unified(model, spec, VQ_SPEC, ["red", "blue"], 16, tmp_path / "u", {"steps": 2})
    back = ocellus.load(tmp_path / "u")
    assert type(back) is type(model) and back.colours == ["red", "blue"] and back.generate_options == {"steps": 2}
    theirs = load_file(str(tmp_path / "u" / "model.safetensors"))
    assert theirs.keys() == model.state_dict().keys()                             # every key written, own names
    assert all(torch.equal(theirs[k], v) for k, v in back.state_dict().items())
    ocellus.save(back, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == \
        json.loads((tmp_path / "u" / "config.json").read_text())
    assert load_unified(tmp_path / "again").state_dict().keys() == model.state_dict().keys()


def test_saving_a_named_model_imports_only_its_family(tmp_path):
    """ocellus.save looks the model's family_name up first: a generator's save imports no vision-language family."""
    code = ("import sys, torch; from ocellus.models.generative.checkpoint import build, save_generator; "
            f"save_generator(build({VQ_SPEC!r}), {str(tmp_path / 'g')!r}); "
            "print(' '.join(m for m in sys.modules if m.startswith('ocellus.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "ocellus.models.generative.checkpoint" in loaded
    own = ("ocellus.models.families", "ocellus.models.families.image_generator",
           "ocellus.models.families.image_generator.checkpoint")                  # the generator family's folder
    assert not [m for m in loaded if m.startswith("ocellus.models.families") and m not in own], loaded
