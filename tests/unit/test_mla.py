"""Multi-head latent attention: cache size, absorbed == naive, parity with transformers' DeepseekV3Attention."""
import pytest
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.masks import build_attention_mask
from ocellus.nn.mla import LatentKVCache, MultiHeadLatentAttention, mla_softmax_scale
from ocellus.nn.rope import RopeConfig, RotaryEmbedding

TINY = dict(dim=32, num_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Default init leaves the norms at 1 and biases near 0; random values exercise every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0.0))


def _mla(q_lora_rank=None, rope_interleave=True, **kw):
    torch.manual_seed(0)
    m = MultiHeadLatentAttention(**TINY, q_lora_rank=q_lora_rank, rope_interleave=rope_interleave, **kw).eval()
    _randomize(m)
    return m


def _rope(position_ids):
    return RotaryEmbedding(RopeConfig(head_dim=TINY["qk_rope_head_dim"]))(position_ids)


def _slice(rope, a, b):
    return rope[0][:, a:b], rope[1][:, a:b]


# (1) -------------------------------------------------------------------------------------------
def test_latent_cache_is_smaller_than_mha_cache_by_the_shape_ratio():
    # DeepSeek-V2's attention sizes: 128 heads, qk 128 + 64, v 128, latent 512
    L, B, T, H, Dn, Dr, Dv, R = 2, 1, 8, 128, 128, 64, 128, 512
    mha = StaticKVCache(L, B, H, T, head_dim=Dn + Dr, v_head_dim=Dv)
    mla = LatentKVCache(L, B, T, kv_lora_rank=R, qk_rope_head_dim=Dr)
    assert mha.nbytes() == L * B * T * H * (Dn + Dr + Dv) * 4 == 2_621_440
    assert mla.nbytes() == L * B * T * (R + Dr) * 4 == 36_864
    # ratio H * (Dn + Dr + Dv) / (R + Dr) = 40960 / 576 ~ 71.1, asserted without rounding
    assert mha.nbytes() * (R + Dr) == mla.nbytes() * H * (Dn + Dr + Dv)
    bf16 = LatentKVCache(L, B, T, R, Dr, dtype=torch.bfloat16)
    assert bf16.nbytes() * 2 == mla.nbytes()


def test_latent_cache_update_reorder_and_overflow():
    cache = LatentKVCache(1, 2, 4, kv_lora_rank=3, qk_rope_head_dim=2)
    c, k = cache.update(0, torch.arange(12.).view(2, 2, 3), torch.ones(2, 2, 2))
    assert c.shape == (2, 2, 3) and k.shape == (2, 2, 2)
    cache.advance(2)
    assert cache.length == 2
    cache.reorder(torch.tensor([1, 1]))
    assert torch.equal(cache.c_kv[0][0, :2], torch.arange(6., 12.).view(2, 3))
    with pytest.raises(InputError, match="holds 4 tokens"):
        cache.update(0, torch.zeros(2, 3, 3), torch.zeros(2, 3, 2))


# (2) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q_lora_rank,rope_interleave", [(None, True), (12, False), (12, True)])
def test_absorbed_incremental_decoding_equals_naive_full_sequence(q_lora_rank, rope_interleave):
    m = _mla(q_lora_rank, rope_interleave)
    B, T, P = 2, 9, 4
    x = torch.randn(B, T, TINY["dim"], generator=torch.Generator().manual_seed(1))
    rope = _rope(torch.arange(T).expand(B, T))
    with torch.no_grad():
        full = m(x, rope)                                                      # naive, no cache
        cache = LatentKVCache(1, B, T, TINY["kv_lora_rank"], TINY["qk_rope_head_dim"])
        outs = [m(x[:, :P], _slice(rope, 0, P), cache=cache)]                  # absorbed prefill
        cache.advance(P)
        outs.append(m(x[:, P:P + 2], _slice(rope, P, P + 2), cache=cache))    # a 2-token chunk, mask=None
        cache.advance(2)
        for t in range(P + 2, T):                                              # token by token
            outs.append(m(x[:, t:t + 1], _slice(rope, t, t + 1), cache=cache))
            cache.advance(1)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == T


# (3) -------------------------------------------------------------------------------------------
def test_absorbed_decoding_with_left_padding_equals_naive():
    m = _mla(q_lora_rank=12)
    B, T, P = 3, 8, 5
    x = torch.randn(B, T, TINY["dim"], generator=torch.Generator().manual_seed(2))
    am = torch.ones(B, T, dtype=torch.long)
    am[1, :2] = 0
    am[2, :4] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    rope = _rope(pos)
    with torch.no_grad():
        full = m(x, rope, mask=build_attention_mask(T, T, attention_mask=am))
        cache = LatentKVCache(1, B, T, TINY["kv_lora_rank"], TINY["qk_rope_head_dim"])
        outs = [m(x[:, :P], _slice(rope, 0, P), build_attention_mask(P, P, attention_mask=am[:, :P]), cache)]
        cache.advance(P)
        for t in range(P, T):
            mask = build_attention_mask(1, t + 1, attention_mask=am[:, :t + 1])
            outs.append(m(x[:, t:t + 1], _slice(rope, t, t + 1), mask, cache))
            cache.advance(1)
    inc = torch.cat(outs, dim=1)
    assert torch.isfinite(inc).all()
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)
    # padding really is ignored: the last real row's output does not depend on the padded inputs
    x2 = x.clone()
    x2[2, :4] = 100.0
    with torch.no_grad():
        full2 = m(x2, rope, mask=build_attention_mask(T, T, attention_mask=am))
    torch.testing.assert_close(full2[2, 4:], full[2, 4:], atol=1e-5, rtol=1e-5)


# (4) -------------------------------------------------------------------------------------------
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
        "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1}


@pytest.mark.parametrize("q_lora_rank,rope_interleave,rope_parameters,attention_bias,padded", [
    (None, True, None, False, False),
    (12, True, None, True, False),
    (12, False, None, False, True),
    (12, True, YARN, False, True),
])
def test_parity_with_transformers_deepseek_v3_attention(q_lora_rank, rope_interleave, rope_parameters,
                                                        attention_bias, padded):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (DeepseekV3Attention,
                                                                      DeepseekV3RotaryEmbedding)

    cfg = DeepseekV3Config(
        hidden_size=TINY["dim"], num_attention_heads=TINY["num_heads"], num_key_value_heads=TINY["num_heads"],
        q_lora_rank=q_lora_rank, kv_lora_rank=TINY["kv_lora_rank"], qk_nope_head_dim=TINY["qk_nope_head_dim"],
        qk_rope_head_dim=TINY["qk_rope_head_dim"], v_head_dim=TINY["v_head_dim"], rope_interleave=rope_interleave,
        attention_bias=attention_bias, max_position_embeddings=64,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
        num_hidden_layers=1, vocab_size=32)
    cfg._attn_implementation = "sdpa"
    ref = DeepseekV3Attention(cfg, layer_idx=0).eval()
    _randomize(ref, seed=3)

    rope_cfg = RopeConfig.from_hf(cfg.to_dict(), head_dim=cfg.qk_rope_head_dim)
    ours = MultiHeadLatentAttention(**TINY, q_lora_rank=q_lora_rank, rope_interleave=rope_interleave,
                                    attention_bias=attention_bias, rope_config=rope_cfg).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.softmax_scale == pytest.approx(ref.scaling, rel=1e-12)
    if rope_parameters is not None:
        assert ours.softmax_scale != pytest.approx(cfg.qk_head_dim ** -0.5)   # the mscale correction is live

    B, T = 2, 7
    x = torch.randn(B, T, TINY["dim"], generator=torch.Generator().manual_seed(4))
    am = torch.ones(B, T, dtype=torch.long)
    if padded:
        am[1, :3] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    cos, sin = DeepseekV3RotaryEmbedding(cfg)(x, pos)
    ours_cos, ours_sin = RotaryEmbedding(rope_cfg)(pos)                       # our rope gives the same tables
    torch.testing.assert_close(ours_cos, cos, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours_sin, sin, atol=1e-6, rtol=1e-6)

    mask = build_attention_mask(T, T, attention_mask=am)
    with torch.no_grad():
        expected, _ = ref(x, position_embeddings=(cos, sin), attention_mask=mask)
        got = ours(x, (cos, sin), mask=mask)
        cache = LatentKVCache(1, B, T, TINY["kv_lora_rank"], TINY["qk_rope_head_dim"])
        got_absorbed = ours(x, (cos, sin), mask=mask, cache=cache)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_absorbed, expected, atol=1e-5, rtol=1e-5)


# (5) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,match", [
    ({"num_heads": 0}, "num_heads"),
    ({"num_heads": -2}, "num_heads"),
    ({"kv_lora_rank": 0}, "kv_lora_rank"),
    ({"q_lora_rank": 0}, "q_lora_rank"),
    ({"qk_rope_head_dim": 3}, "must be even"),
    ({"v_head_dim": 2.5}, "v_head_dim"),
    ({"rope_config": RopeConfig(head_dim=8)}, "qk_rope_head_dim is 4"),
])
def test_bad_config_raises_config_error(override, match):
    kw = {**TINY, "q_lora_rank": None, **override}
    with pytest.raises(ConfigError, match=match):
        MultiHeadLatentAttention(**kw)


def test_rope_of_wrong_width_raises_input_error():
    m = _mla()
    x = torch.randn(1, 3, TINY["dim"])
    bad = RotaryEmbedding(RopeConfig(head_dim=8))(torch.arange(3)[None])
    with pytest.raises(InputError, match="qk_rope_head_dim"):
        m(x, bad)


def test_softmax_scale_without_yarn_is_inverse_sqrt_head_dim():
    assert mla_softmax_scale(192) == 192 ** -0.5
    assert mla_softmax_scale(192, RopeConfig(head_dim=64)) == 192 ** -0.5
