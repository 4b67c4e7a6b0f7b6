"""GenerationConfig's settings are checked, whatever type a generation_config.json gives them (a ConfigError naming
the field, never a TypeError), and the serving
engine stops at generation_config.json's eos list (Llama-3-Instruct's <|eot_id|> sits there, not in config.json)."""
import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.hub.families import family_for_config
from ocellus.infer.batching import BatchEngine
from ocellus.infer.generate import GenerationConfig, resolve_config


@pytest.mark.parametrize("field,value", [
    ("min_new_tokens", -1), ("min_new_tokens", 1.5), ("min_new_tokens", None), ("no_repeat_ngram_size", -2),
    ("no_repeat_ngram_size", 2.0),
    # the types a generation_config.json may hold: each fails its own check, not a comparison elsewhere
    ("top_p", "0.9"), ("min_p", "0.1"), ("repetition_penalty", "1.1"), ("temperature", None), ("temperature", "1"),
    ("eos_token_id", 3.0), ("eos_token_id", ["a"]), ("pad_token_id", "0"), ("stop_strings", 5), ("stop_strings", [""]),
    ("do_sample", "no"), ("length_penalty", None), ("seed", "x"), ("max_new_tokens", True), ("top_k", 2.5),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig.from_kwargs(**{field: value})


def _decoder(eos):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
           "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "max_position_embeddings": 64, "eos_token_id": eos, "pad_token_id": 0}
    torch.manual_seed(0)
    return family_for_config(cfg).build(cfg).eval()


def test_eos_and_pad_come_from_the_file_when_there_is_one():
    model = _decoder(eos=2)
    assert resolve_config(model, {}).eos_token_id == (2,) and resolve_config(model, {}).pad_token_id == 0
    model.generation_defaults = {"eos_token_id": [2, 9]}
    cfg = resolve_config(model, {})
    assert (cfg.eos_token_id, cfg.pad_token_id) == ((2, 9), 2)     # transformers: pad = eos[0], not config's 0
    assert resolve_config(model, {"eos_token_id": 4}).eos_token_id == (4,)


def test_the_engine_stops_at_the_files_eos_list():
    model = _decoder(eos=2)
    model.generation_defaults = {"eos_token_id": [2, 9]}
    assert BatchEngine(model, None, slots=1, prepack=False).eos == (2, 9)


def test_beams_over_a_sampling_file_name_the_file_and_the_way_out():
    """A chat checkpoint's file sets do_sample=true; a caller asking for beams alone is told the sampling comes from
    the file and that do_sample=False gives beam search (which then runs as asked)."""
    model = _decoder(eos=2)
    model.generation_defaults = {"do_sample": True, "temperature": 0.7}
    with pytest.raises(ConfigError, match="generation_config.json sets do_sample=true.*do_sample=False"):
        resolve_config(model, {"num_beams": 3})
    cfg = resolve_config(model, {"num_beams": 3, "do_sample": False})
    assert cfg.num_beams == 3 and cfg.greedy
    assert not resolve_config(model, {}).greedy                     # without beams the file's sampling stands
