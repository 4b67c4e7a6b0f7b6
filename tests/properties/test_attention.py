"""Attention properties: GQA with kv_heads == heads is MHA; GQA is MHA with each K/V head
repeated over its query group; cached incremental decoding equals full recomputation; packed
documents equal separate sequences."""
import math

import torch
from hypothesis import given, settings, strategies as st

from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.attention import Attention
from ocellus.nn.masks import build_attention_mask
from ocellus.nn.rope import RopeConfig


def _mha_reference(x, wq, wk, wv, wo, heads):
    """Plain multi-head attention from the paper's equations, causal."""
    B, T, D = x.shape
    dh = wq.shape[0] // heads
    q = (x @ wq.T).view(B, T, heads, dh).transpose(1, 2)
    k = (x @ wk.T).view(B, T, heads, dh).transpose(1, 2)
    v = (x @ wv.T).view(B, T, heads, dh).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(dh)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, heads * dh)
    return y @ wo.T


def test_gqa_with_all_kv_heads_is_mha():
    torch.manual_seed(0)
    att = Attention(32, num_heads=4, num_kv_heads=4)
    x = torch.randn(2, 7, 32)
    ref = _mha_reference(x, att.q_proj.weight, att.k_proj.weight, att.v_proj.weight, att.o_proj.weight, 4)
    torch.testing.assert_close(att(x), ref, atol=1e-5, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(kv=st.sampled_from([1, 2, 4]), seed=st.integers(0, 1000))
def test_gqa_is_mha_with_repeated_kv_heads(kv, seed):
    torch.manual_seed(seed)
    heads, dh = 8, 8
    att = Attention(64, num_heads=heads, num_kv_heads=kv, head_dim=dh)
    rep = lambda w: w.view(kv, dh, -1).repeat_interleave(heads // kv, 0).reshape(heads * dh, -1)  # noqa: E731
    x = torch.randn(1, 5, 64)
    ref = _mha_reference(x, att.q_proj.weight, rep(att.k_proj.weight), rep(att.v_proj.weight), att.o_proj.weight, heads)
    torch.testing.assert_close(att(x), ref, atol=1e-5, rtol=1e-5)


def _tiny_decoder(seed=0, kv=2):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=kv, head_dim=8,
                        rope=RopeConfig(head_dim=8, max_position_embeddings=128), max_position_embeddings=128)
    return DecoderLM(cfg).eval()


@settings(max_examples=15, deadline=None)
@given(prompt=st.integers(1, 20), steps=st.lists(st.integers(1, 4), min_size=1, max_size=5), seed=st.integers(0, 99))
def test_incremental_decoding_with_cache_equals_full_recomputation(prompt, steps, seed):
    """Feeding the sequence in chunks through the KV cache gives the logits of one full pass."""
    model = _tiny_decoder(seed % 3)
    ids = torch.randint(0, 50, (2, prompt + sum(steps)), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, ids.shape[1])
        chunks, start = [], 0
        for n in [prompt, *steps]:
            chunks.append(model(ids[:, start:start + n], cache=cache).logits)
            start += n
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-5)


def test_packed_documents_equal_separate_sequences():
    model = _tiny_decoder()
    a, b = torch.randint(0, 50, (1, 6)), torch.randint(0, 50, (1, 9))
    packed = torch.cat([a, b], 1)
    docs = torch.tensor([[0] * 6 + [1] * 9])
    pos = torch.cat([torch.arange(6), torch.arange(9)])[None]
    with torch.no_grad():
        out = model(packed, document_ids=docs, position_ids=pos).logits
        torch.testing.assert_close(out[:, :6], model(a).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 6:], model(b).logits, atol=1e-5, rtol=1e-5)


def test_mask_builder_cases():
    assert build_attention_mask(4, 4) is None                                # plain causal: SDPA's own path
    assert build_attention_mask(1, 9) is None                                # one query sees the whole cache
    m = build_attention_mask(2, 5)                                           # chunk after a cache: bottom-right causal
    assert m[0, 0].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    pad = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    m = build_attention_mask(4, 4, attention_mask=pad)
    assert m[0, 0].tolist() == [[True, False, False, False], [False, True, False, False],
                                [False, False, True, False], [False, False, True, True]]  # pads see only themselves
    assert m[1, 0].tolist() == torch.ones(4, 4, dtype=torch.bool).tril().tolist()
    docs = torch.tensor([[0, 0, 1, 1]])
    m = build_attention_mask(4, 4, document_ids=docs)
    assert m[0, 0, 3].tolist() == [False, False, True, True]
    m = build_attention_mask(3, 3, attention_mask=torch.tensor([[0, 1, 1]]), causal=False)
    assert m[0, 0].tolist() == [[True, True, True], [False, True, True], [False, True, True]]
