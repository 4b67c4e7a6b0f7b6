"""A config.json that names no `architectures` (hand-written: save_pretrained always writes them) builds its
model_type's class, as transformers' Auto classes do, instead of being refused (hub/families.with_architectures)."""
import json

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError
from ocellus.hub.families import FamilyRecord, register, with_architectures
from tests.conftest import build_reference, save_reference

tf = pytest.importorskip("transformers")


def _drop_architectures(path):
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("architectures")
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_a_decoder_config_without_architectures_loads_as_its_causal_lm(tmp_path, kind):
    ref = build_reference(kind)
    save_reference(ref, tmp_path)
    _drop_architectures(tmp_path)
    ids = torch.tensor([[5, 17, 3, 60, 2, 9]])
    got = ocellus.load(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(got(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)
    out = tmp_path / "saved"
    ocellus.save(got, out)     # and it saves with the class written, so transformers reads it back
    assert json.loads((out / "config.json").read_text())["architectures"] == [type(ref).__name__]


def test_a_vision_tower_config_without_architectures_loads(tmp_path):
    cfg = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    torch.manual_seed(0)
    ref = tf.SiglipVisionModel(cfg).eval()
    ref.save_pretrained(tmp_path)
    _drop_architectures(tmp_path)
    pix = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = ocellus.load(tmp_path).eval()(pix, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(got, ref(pix, output_hidden_states=True).hidden_states[-1], atol=1e-5, rtol=1e-5)


def test_with_architectures_names_each_model_types_own_class_and_leaves_the_rest():
    assert with_architectures({"model_type": "qwen2_5_vl"})["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert with_architectures({"model_type": "clip_text_model"})["architectures"] == ["CLIPTextModel"]
    assert with_architectures({"model_type": "mistral"})["architectures"] == ["MistralForCausalLM"]
    named = {"model_type": "bert", "architectures": ["BertForMaskedLM"]}
    assert with_architectures(named) is named
    own = {"model_type": "ocellus_unified"}                       # an Ocellus format: found by model_type
    assert with_architectures(own) is own
    with pytest.raises(ConfigError, match="unknown model_type 'gpt_neo'"):
        ocellus.hub.families.family_for_config({"model_type": "gpt_neo"})


def test_a_family_must_give_each_model_type_its_architecture():
    with pytest.raises(ConfigError, match="each model_type needs its architecture"):
        register(FamilyRecord("two_types_one_class", ("type_a_x", "type_b_x"), ("OnlyOneClassX",),
                              checkpoint="ocellus.models.families.decoder.checkpoint"))
