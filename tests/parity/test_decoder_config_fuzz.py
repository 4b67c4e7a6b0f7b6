"""Decoder config.json files no other test names, against transformers: what fuzzing random tiny Llama / Mistral /
Qwen2 / Qwen3 / DeepSeek-V2 / V3 configs found (a throwaway script: rope types and both spellings, head_dim, GQA / MQA,
biases, tying with and without lm_head in the file, shards, activations, windows, dtype fields, left-out fields;
logits, greedy ids and save -> transformers compared), one representative config per bug:
- longrope swaps its short factors for the long ones past the original context (before: never, where
  max_position_embeddings > original_max_position_embeddings, i.e. every longrope checkpoint); factor lists of another
  length than the rotated frequencies are a ConfigError;
- a top-level original_max_position_embeddings (Phi-3's place for it) wins over the rope dict's, and rope_scaling over
  rope_parameters where a config.json has both, as transformers reads them;
- a field config.json leaves out takes the value transformers' config class gives it (Qwen2 / Qwen3: 32 key/value heads
  and a 32768 context, Mistral: 8; one that transformers cannot run is warned about), and the class's default eos
  (Llama, Mistral, DeepSeek-V2: 2, DeepSeek-V3: 1) stops nothing, as in transformers' generate;
- partial_rotary_factor with a scaled rope on a whole-head class, or sliding layers without a window: transformers
  fails on them, so each is a ConfigError;
- every parameter-free hidden_act transformers reads (gelu_fast, relu2, mish, ...) computes as its; a learned one is a
  ConfigError naming hidden_act;
- generation_config.json's max_length caps prompt + new tokens (max_new_tokens wins), in generate and stream.
Each config's checkpoint is written here: config.json exactly as spelled, weights of transformers' model for it."""
import json
import math

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError, InputError
from ocellus.infer.generate import stream
from ocellus.models.text.decoder import DecoderConfig
from ocellus.nn.mlp import ACTIVATIONS

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

BASE = {"vocab_size": 97, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": None, "pad_token_id": 0}
ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
        "qwen3": "Qwen3ForCausalLM"}
LONG = [1.0 + 0.4 * i for i in range(8)]            # head_dim 16: 8 frequencies; long ones far from short ones
SHORT = [1.0 + 0.05 * i for i in range(8)]


def config(kind: str, **fields) -> dict:
    return {"architectures": [ARCH[kind]], "model_type": kind, **BASE, **fields}


@torch.no_grad()
def checkpoint(path, cfg: dict, seed: int = 0):
    """config.json as given + random weights for transformers' reading of it (N(0, 1/fan_in), q/k x2: attention far
    from uniform; norms and biases off their constants), written by its save_pretrained (DeepSeek's experts in the
    hub's per-expert names), no generation_config.json -> (transformers' model loaded from it, path)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.state_dict().items():
        if p.dim() >= 2:
            t = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1])
            t = t * 2 if name.endswith(("q_proj.weight", "k_proj.weight")) else t
        else:
            t = torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name else 0.0)
        p.copy_(t)
    model.save_pretrained(path)
    (path / "generation_config.json").unlink(missing_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), path


def _ids(t: int, seed: int = 0, b: int = 1):
    return torch.randint(2, 97, (b, t), generator=torch.Generator().manual_seed(seed))


def _same_logits_and_greedy_ids(ref, ours, t: int, prompt: int, new: int):
    ids = _ids(t, b=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
    p = _ids(prompt, seed=1)
    want = ref.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=new, do_sample=False)
    assert torch.equal(ours.generate(p, max_new_tokens=new), want)


LONGROPE = {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG, "original_max_position_embeddings": 16}


@pytest.mark.parametrize("kind,spelling", [("llama", "5.x"), ("qwen2", "4.x"), ("qwen3", "5.x")])
def test_longrope_switches_to_its_long_factors_past_the_original_context(kind, spelling, tmp_path):
    """Context 64, trained 16: a 40-token forward reads the long factors (and the attention factor of factor 4); a
    12-token prompt decodes with the short ones until it passes 16 tokens, then with the long ones, as transformers
    does at each call. Before, the long factors were never used: 'already computed for 64 tokens' held from the start."""
    rope = {**LONGROPE, "factor": 4.0}
    if spelling == "4.x":
        fields = {"rope_theta": 10000.0, "rope_scaling": {"type": "longrope", **rope}}
    else:
        fields = {"rope_parameters": {**rope, "rope_theta": 10000.0}}
    ref, path = checkpoint(tmp_path, config(kind, **fields))
    _same_logits_and_greedy_ids(ref, ocellus.load(path), t=40, prompt=12, new=20)


@pytest.mark.parametrize("key", ["short_factor", "long_factor"])
def test_longrope_factors_of_another_length_are_a_config_error(key):
    """transformers only warns, then broadcasts or fails at the first long sequence."""
    rope = {**LONGROPE, key: LONG[:3], "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match=f"rope {key} must list 8 numbers"):
        DecoderConfig.from_hf(config("llama", rope_parameters=rope))


@pytest.mark.parametrize("rope", [LONGROPE, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
                                  {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 32}], ids=lambda r: r["rope_type"])
def test_a_top_level_original_context_wins_over_the_rope_dicts(rope, tmp_path):
    """Phi-3 writes original_max_position_embeddings next to the rope dict; transformers' config reads that one
    whatever the dict says. Before, the dict's won: other frequencies and attention factor."""
    ref, path = checkpoint(tmp_path, config("llama", original_max_position_embeddings=8,
                                            rope_parameters={**rope, "rope_theta": 10000.0}))
    ours = ocellus.load(path)
    assert ours.config.rope.original_max_position_embeddings == 8
    _same_logits_and_greedy_ids(ref, ours, t=40, prompt=6, new=12)


def test_rope_scaling_wins_over_rope_parameters_where_both_are_written(tmp_path):
    """A config.json with the 4.x and the 5.x rope spelling: transformers' config reads rope_scaling (linear x4 here,
    x2 in rope_parameters). Before, Ocellus read rope_parameters: other positions."""
    ref, path = checkpoint(tmp_path, config("llama", rope_scaling={"rope_type": "linear", "factor": 4.0},
                                            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}))
    ours = ocellus.load(path)
    assert ours.config.rope.params["factor"] == 4.0
    _same_logits_and_greedy_ids(ref, ours, t=30, prompt=6, new=8)


MINIMAL = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 64, "head_dim": 4}


@pytest.mark.parametrize("kind", list(ARCH))
def test_fields_left_out_read_as_transformers_defaults(kind):
    """Only the sizes given: each field the model reads is transformers' config class's value (eos: below)."""
    cfg = {"model_type": kind, **MINIMAL}
    ours = DecoderConfig.from_hf(cfg)
    hf = transformers.AutoConfig.for_model(**cfg)
    assert (ours.num_key_value_heads, ours.head_dim, ours.max_position_embeddings, ours.pad_token_id, ours.rms_norm_eps,
            ours.rope.theta, ours.tie_word_embeddings, ours.hidden_act, ours.sliding_window) == \
           (hf.num_key_value_heads, hf.head_dim, hf.max_position_embeddings, hf.pad_token_id, hf.rms_norm_eps,
            hf.rope_parameters["rope_theta"], hf.tie_word_embeddings, hf.hidden_act, getattr(hf, "sliding_window", None))
    if kind != "mistral":        # an explicit null: one per query head (MistralConfig refuses a null)
        null = DecoderConfig.from_hf({**cfg, "num_key_value_heads": None})
        assert null.num_key_value_heads == transformers.AutoConfig.for_model(**cfg, num_key_value_heads=None).num_key_value_heads


def test_a_qwen3_without_num_key_value_heads_loads_transformers_32(tmp_path):
    """Qwen3 with 64 query heads and no num_key_value_heads: transformers builds 32 key/value heads (GQA 2). Before,
    Ocellus built 64 and refused the checkpoint (shape mismatch)."""
    cfg = config("qwen3", **{**MINIMAL, "num_hidden_layers": 2})
    cfg.pop("num_key_value_heads")
    ref, path = checkpoint(tmp_path, cfg)
    _same_logits_and_greedy_ids(ref, ocellus.load(path), t=24, prompt=6, new=8)


def test_a_default_head_count_transformers_cannot_run_is_warned_about(caplog):
    """Mistral defaults to 8 key/value heads: with 4 query heads transformers builds a model its forward cannot run
    (no reference). Ocellus' own configs mean one per query head: that, with a warning naming the field."""
    with caplog.at_level("WARNING", logger="ocellus"):
        cfg = DecoderConfig.from_hf({"model_type": "mistral", **MINIMAL, "num_attention_heads": 4})
    assert cfg.num_key_value_heads == 4
    assert "leaves num_key_value_heads out: transformers' 'mistral' default 8 does not divide" in caplog.text


DEEPSEEK = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 4, "kv_lora_rank": 16, "q_lora_rank": None,
            "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 6, "n_routed_experts": 4, "n_group": 2,
            "topk_group": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "max_position_embeddings": 64}
CLASS_EOS = {"llama": 2, "mistral": 2, "deepseek_v2": 2, "deepseek_v3": 1}


@pytest.mark.parametrize("kind", list(CLASS_EOS))
@torch.no_grad()
def test_without_eos_in_config_json_the_class_default_stops_nothing(kind, tmp_path):
    """LlamaConfig / MistralConfig / DeepseekV2Config read a left-out eos_token_id as 2 (DeepseekV3Config as 1), but
    transformers' generate (no generation_config.json) stops only at an eos config.json names. That token's lm_head
    row is made 1.01 x that of the prompt's first greedy token, so it comes first: both go on past it. Before, a
    Mistral or DeepSeek stopped there."""
    eos = CLASS_EOS[kind]
    cfg = config(kind) if kind in ARCH else {"architectures": [f"DeepseekV{kind[-1]}ForCausalLM"], "model_type": kind,
                                             **DEEPSEEK}
    cfg.pop("eos_token_id", None)
    ref, path = checkpoint(tmp_path, cfg)
    p = _ids(6, seed=3)
    first = int(ref(p).logits[0, -1].argmax())
    tensors = load_file(path / "model.safetensors")
    tensors["lm_head.weight"][eos] = tensors["lm_head.weight"][first] * 1.01
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    want = ref.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=8, do_sample=False)
    assert want[0, 6] == eos and want.shape[1] == 6 + 8
    assert torch.equal(ocellus.load(path).generate(p, max_new_tokens=8), want)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "qwen3"])
@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}],
                         ids=lambda r: r["rope_type"])
def test_partial_rotary_with_a_scaled_rope_is_a_config_error(kind, rope):
    """These classes rotate the whole head; transformers' scaled frequencies cover partial_rotary_factor of it, so its
    forward fails (no model to match). The default rope ignores the factor in both (test_decoder_parity.py)."""
    cfg = {"model_type": kind, **BASE, "partial_rotary_factor": 0.5, "rope_parameters": rope}
    with pytest.raises(ConfigError, match="partial_rotary_factor 0.5 with rope_type"):
        DecoderConfig.from_hf(cfg)
    if kind == "llama":                      # the reference fails on it
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
        with pytest.raises(RuntimeError, match="size of tensor"):
            model(_ids(4))


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
@pytest.mark.parametrize("window", [{"use_sliding_window": False, "sliding_window": 8},
                                    {"use_sliding_window": True, "sliding_window": None}], ids=["off", "null"])
def test_sliding_layers_without_a_window_are_a_config_error(kind, window, tmp_path):
    """layer_types names a sliding layer, but the window is off (transformers' config then drops it) or null:
    transformers' forward fails on it. Before, Ocellus ran full attention there."""
    cfg = config(kind, layer_types=["sliding_attention", "full_attention"], **window)
    with pytest.raises(ConfigError, match="layer_types names sliding_attention layers but there is no window"):
        DecoderConfig.from_hf(cfg)
    if kind == "qwen2" and window["use_sliding_window"] is False:        # the reference fails on it
        ref, _ = checkpoint(tmp_path, cfg)
        with pytest.raises(ValueError, match="sliding_window"):
            ref(_ids(4), use_cache=False)


NEW_ACTS = ["gelu_python", "gelu_python_tanh", "gelu_fast", "gelu_accurate", "gelu_10", "relu2", "relu6", "leaky_relu",
            "mish", "hardswish", "tanh", "sigmoid", "sqrtsoftplus", "linear", "laplace"]


@pytest.mark.parametrize("act", NEW_ACTS)
def test_every_parameter_free_activation_of_transformers_computes_as_its(act, tmp_path):
    """hidden_act names transformers' ACT2FN reads; before, these were refused ('unknown activation'). Over [-20, 20]
    (gelu_10's clip, relu6's cap) and through a model."""
    from transformers.activations import ACT2FN
    x = torch.linspace(-20, 20, 401)
    torch.testing.assert_close(ACTIVATIONS[act](x), ACT2FN[act](x))
    ref, path = checkpoint(tmp_path, config("qwen2", hidden_act=act, num_hidden_layers=1))
    with torch.no_grad():
        ids = _ids(12)
        torch.testing.assert_close(ocellus.load(path)(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_a_learned_activation_is_a_config_error_naming_hidden_act():
    with pytest.raises(ConfigError, match="config hidden_act 'prelu' is not one Ocellus computes"):
        DecoderConfig.from_hf(config("llama", hidden_act="prelu"))


MAX_LENGTH_CASES = [({"max_length": 14}, {}, 6),                        # the file's cap: 14 - 8 prompt tokens
                    ({"max_length": 30, "max_new_tokens": 5}, {}, 5),   # max_new_tokens wins over max_length
                    ({"max_length": 30}, {"max_new_tokens": 5}, 5),     # the caller's too
                    ({"max_new_tokens": 5}, {"max_length": 12}, 5),     # even the file's over the caller's max_length
                    ({}, {"max_length": 12}, 4),                        # the caller's cap
                    ({"max_length": 20}, {}, 12)]                       # transformers' default value, given: a cap too


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("llama"), config("llama"))


@pytest.mark.parametrize("file,kwargs,new", MAX_LENGTH_CASES, ids=lambda v: str(v))
def test_max_length_caps_prompt_and_new_tokens_as_transformers(llama, file, kwargs, new, caplog):
    _, path = llama
    (path / "generation_config.json").write_text(json.dumps(file))
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours = ocellus.load(path)
    p = _ids(8, seed=4)
    want = ref.generate(p, attention_mask=torch.ones_like(p), do_sample=False, **kwargs)
    with caplog.at_level("WARNING", logger="ocellus"):
        got = ours.generate(p, **kwargs)
    assert want.shape[1] == 8 + new and torch.equal(got, want)
    assert "max_length" not in caplog.text          # used, not warned about as unimplemented
    text = "".join(stream(ours, _Letters(), p, **kwargs))
    assert len(text) == new                         # stream: one letter a token


def test_a_prompt_reaching_max_length_is_an_input_error(llama):
    _, path = llama
    (path / "generation_config.json").write_text(json.dumps({"max_length": 8}))
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    p = _ids(8, seed=4)
    with pytest.raises(ValueError, match="max_length"):            # transformers refuses it too
        ref.generate(p, attention_mask=torch.ones_like(p), do_sample=False)
    ours = ocellus.load(path)
    with pytest.raises(InputError, match="prompt of 8 tokens reaches generation max_length=8"):
        ours.generate(p)
    with pytest.raises(InputError, match="max_length=8"):
        next(stream(ours, _Letters(), p))
    assert ours.generate(p, max_new_tokens=2).shape[1] == 10       # max_new_tokens wins over it
    with pytest.raises(ConfigError, match="max_length must be an int > 0"):
        ours.generate(p, max_length="long")


class _Letters:
    """A detokenizer for stream(): token id -> one letter."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i % 26) for i in ids)
