"""Bad inputs to the decoder are typed errors that name the problem."""
import pytest
import torch

import ocellus
from ocellus.errors import ConfigError, InputError
from ocellus.models.text.decoder import DecoderConfig, DecoderLM


@pytest.fixture(scope="module")
def model(llama_dir):
    return ocellus.load(llama_dir)


def test_wrong_dtype_and_shape(model):
    with pytest.raises(InputError, match="integer"):
        model(torch.rand(1, 4))
    with pytest.raises(InputError, match=r"\[batch, seq\]"):
        model(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(InputError, match=r"inputs_embeds must be \[B, T, 64\]"):
        model(inputs_embeds=torch.zeros(1, 3, 5))


def test_ids_outside_vocab(model):
    with pytest.raises(InputError, match=r"outside \[0, 97\)"):
        model(torch.tensor([[1, 97]]))


def test_longer_than_context(model):
    with pytest.raises(InputError, match="exceeds the model's context of 256"):
        model(torch.zeros(1, 257, dtype=torch.long))


def test_cached_tokens_count_towards_the_context(model):
    cache = model.new_cache(1, 260)
    model(torch.zeros(1, 250, dtype=torch.long), cache=cache)
    with pytest.raises(InputError, match="sequence of 257 tokens exceeds the model's context of 256"):
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)


def test_default_positions_continue_after_the_cache(model):
    """Without position_ids a forward over a cache starts where the cache ends: two chunks give the logits of
    one pass."""
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        whole = model(ids).logits
        model(ids[:, :7], cache=cache)
        rest = model(ids[:, 7:], cache=cache).logits
    torch.testing.assert_close(rest, whole[:, 7:], atol=1e-5, rtol=1e-5)


def test_labels_shape_and_unknown_argument(model):
    with pytest.raises(InputError, match="labels shape"):
        model(torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(InputError, match="unexpected forward arguments \\['pixel_values'\\]"):
        model(torch.zeros(1, 4, dtype=torch.long), pixel_values=torch.zeros(1))


def test_bad_config_fields():
    with pytest.raises(ConfigError, match="lacks required fields \\['intermediate_size'\\]"):
        DecoderConfig.from_hf({"vocab_size": 5, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2})
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads=3"):
        DecoderConfig.from_hf({"vocab_size": 5, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                               "num_attention_heads": 4, "num_key_value_heads": 3})
    with pytest.raises(ConfigError, match="sliding_window must be a positive int"):
        DecoderConfig.from_hf({"vocab_size": 5, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "use_sliding_window": True, "sliding_window": 0})


@pytest.mark.parametrize("extra,window", [({"model_type": "mistral", "sliding_window": 6}, 6),
                                          ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 6,
                                            "max_window_layers": 0}, 6),
                                          ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 6}, None),
                                          ({"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 6,
                                            "layer_types": ["sliding_attention"]}, 6),
                                          ({"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 6,
                                            "max_window_layers": 0}, None),
                                          ({"model_type": "llama", "sliding_window": 6}, None),
                                          ({"model_type": "mistral", "sliding_window": None}, None)])
def test_a_sliding_window_caps_the_context(extra, window):
    """Attention within the window is full attention, past it is not implemented: a checkpoint that applies a
    window (Mistral; Qwen2 / Qwen3 with use_sliding_window on a layer of layer_types, by default those from
    max_window_layers (28) on: none of this one layer) is exact up to it and refuses longer sequences, naming it."""
    cfg = DecoderConfig.from_hf({"vocab_size": 11, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "max_position_embeddings": 32, **extra})
    model = DecoderLM(cfg).eval()
    assert cfg.sliding_window == window and model.max_context == (window or 32)
    model(torch.zeros(1, window or 32, dtype=torch.long))
    with pytest.raises(InputError, match="sliding-window attention past 6" if window else "context of 32"):
        model(torch.zeros(1, (window or 32) + 1, dtype=torch.long))


def test_a_partial_rotation_is_read_as_transformers_reads_it_and_never_saved_as_llama(caplog):
    """transformers' Llama / Qwen2 / Mistral rotate every dim of the head and ignore partial_rotary_factor: so does
    a load of those model types (with a warning naming it); a config without one keeps it, and such a decoder is
    refused by to_hf (a Llama config.json would be read back rotating the whole head)."""
    base = {"vocab_size": 11, "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "partial_rotary_factor": 0.5}
    for model_type in ("llama", "qwen2", "mistral"):
        with caplog.at_level("WARNING"):
            cfg = DecoderConfig.from_hf({**base, "model_type": model_type})
        assert cfg.rope.partial_rotary_factor == 1.0 and "ignores its partial_rotary_factor 0.5" in caplog.text
        cfg.to_hf()
    own = DecoderConfig.from_hf(base)
    assert own.rope.partial_rotary_factor == 0.5 and own.rope.rotary_dim == 4
    with pytest.raises(ConfigError, match="cannot be saved"):
        own.to_hf()
