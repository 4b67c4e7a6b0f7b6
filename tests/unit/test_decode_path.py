"""Attention's one-token decode path (Attention._decode_one, the GQA fold in `attend`) gives what
the general path gives for the same token: MQA / GQA / MHA, with and without qkv bias, with a
left-padding mask."""
import pytest
import torch

from ocellus.nn.attention import Attention
from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.masks import build_attention_mask
from ocellus.nn.rope import RopeConfig, RotaryEmbedding


@pytest.mark.parametrize("kv", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_one_token_step_equals_full_pass(kv, bias):
    torch.manual_seed(kv)
    att = Attention(32, num_heads=4, num_kv_heads=kv, head_dim=8, qkv_bias=bias).eval()
    rope = RotaryEmbedding(RopeConfig(head_dim=8))
    x = torch.randn(2, 6, 32)
    pad = torch.ones(2, 6, dtype=torch.long)
    pad[0, :2] = 0                                                            # row 0 is left-padded
    pos = (pad.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = att(x, rope(pos), build_attention_mask(6, 6, attention_mask=pad))   # general path, no cache
        cache = StaticKVCache(1, 2, kv, 6, 8)
        att(x[:, :5], rope(pos[:, :5]), build_attention_mask(5, 5, attention_mask=pad[:, :5]), cache)
        cache.advance(5)
        step = att(x[:, 5:], rope(pos[:, 5:]), build_attention_mask(1, 6, attention_mask=pad), cache)
    torch.testing.assert_close(step, full[:, 5:], atol=1e-6, rtol=1e-5)
