"""RoPE as the paper states it, and frequencies equal to transformers' for every scaling type."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ocellus.errors import ConfigError
from ocellus.nn.positional import sinusoidal_encoding
from ocellus.nn.rope import RopeConfig, RotaryEmbedding, apply_rotary, rope_frequencies


@settings(max_examples=30, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 500),
       rtype=st.sampled_from(["default", "linear", "llama3", "yarn"]), partial=st.sampled_from([1.0, 0.5]))
def test_score_depends_only_on_relative_position(m, n, shift, rtype, partial):
    """<R_m q, R_n k> == <R_{m+s} q, R_{n+s} k>: attention sees only n - m."""
    params = {"linear": {"factor": 2.0}, "yarn": {"factor": 4.0, "original_max_position_embeddings": 64},
              "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}}.get(rtype, {})
    rope = RotaryEmbedding(RopeConfig(head_dim=32, rope_type=rtype, partial_rotary_factor=partial,
                                      max_position_embeddings=4096, params=params))
    g = torch.Generator().manual_seed(m * 1000 + n)
    q, k = torch.randn(1, 1, 1, 32, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 32, generator=g, dtype=torch.float64)

    def score(a, b):
        ca, sa = rope(torch.tensor([[a]]), dtype=torch.float64)
        cb, sb = rope(torch.tensor([[b]]), dtype=torch.float64)
        return (apply_rotary(q, ca, sa) * apply_rotary(k, cb, sb)).sum()

    # angles are computed in fp32 (as transformers does), so allow fp32 rounding of m*theta
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=2e-4, rtol=1e-4)


def test_rotation_preserves_norm():
    rope = RotaryEmbedding(RopeConfig(head_dim=16))
    x = torch.randn(2, 3, 10, 16, dtype=torch.float64)
    cos, sin = rope(torch.arange(10).expand(2, 10), dtype=torch.float64)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


CASES = {
    "default": {},
    "linear": {"factor": 4.0},
    "dynamic": {"factor": 2.0},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 16, "beta_slow": 2},
    "longrope": {"short_factor": [1.0 + i / 10 for i in range(16)], "long_factor": [2.0 + i / 5 for i in range(16)],
                 "original_max_position_embeddings": 128},
}


@pytest.mark.parametrize("rope_type", list(CASES))
@pytest.mark.parametrize("seq_len", [None, 1000])
def test_frequencies_equal_transformers(rope_type, seq_len):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    params = {"rope_type": rope_type, "rope_theta": 50000.0, **CASES[rope_type]}
    hf_cfg = LlamaConfig(hidden_size=256, num_attention_heads=8, max_position_embeddings=512, rope_parameters=params)
    ours = RopeConfig.from_hf(hf_cfg.to_dict(), head_dim=32)
    inv, attn = rope_frequencies(ours, seq_len=seq_len)
    if rope_type == "default":
        ref_inv = 1.0 / (50000.0 ** (torch.arange(0, 32, 2).float() / 32))
        ref_attn = 1.0
    else:
        ref_inv, ref_attn = ROPE_INIT_FUNCTIONS[rope_type](hf_cfg, "cpu", seq_len=seq_len)
    torch.testing.assert_close(inv, ref_inv.float())
    assert math.isclose(attn, ref_attn, rel_tol=1e-6)


def test_unknown_or_incomplete_rope_is_config_error():
    with pytest.raises(ConfigError, match="unknown rope type 'ntk-by-parts'"):
        RopeConfig.from_hf({"rope_scaling": {"type": "ntk-by-parts", "factor": 2}}, head_dim=8)
    with pytest.raises(ConfigError, match="needs \\['factor'"):
        RopeConfig.from_hf({"rope_scaling": {"rope_type": "llama3"}}, head_dim=8)


def test_sinusoidal_matches_formula():
    pe = sinusoidal_encoding(50, 16)
    pos, i = 37, 3
    assert math.isclose(pe[pos, 2 * i].item(), math.sin(pos / 10000 ** (2 * i / 16)), rel_tol=1e-5)
    assert math.isclose(pe[pos, 2 * i + 1].item(), math.cos(pos / 10000 ** (2 * i / 16)), rel_tol=1e-5)
