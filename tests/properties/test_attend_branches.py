"""`attend` (nn/attention.py) has three GQA code paths: the one-query decode path (query heads of a
group become rows of their kv head), CPU SDPA with enable_gqa, and the path CUDA takes (K/V heads
copied `groups` times). CPU runs never reach the last one unless `EXPAND_KV_ON_CPU` is set, so each
path is checked here against attention written out from the paper:

    y_h = softmax(q_h k_{g(h)}^T * scale + bias) v_{g(h)},   g(h) = h // (H / H_kv),  scale = 1/sqrt(d)

with bias = -inf where the boolean mask is False (Ainslie et al. 2023: query head h uses kv head g(h)).
"""
import math

import pytest
import torch

import ocellus.nn.attention as attention
from ocellus.nn.attention import attend


def reference(q, k, v, allowed, scale=None):
    """q [B, H, Tq, D], k/v [B, Hkv, Tk, D], allowed [B, 1, Tq, Tk] bool or None -> [B, H, Tq, Dv]."""
    B, H, Tq, D = q.shape
    groups = H // k.shape[1]
    scale = 1 / math.sqrt(D) if scale is None else scale
    out = torch.empty(B, H, Tq, v.shape[-1], dtype=q.dtype)
    for h in range(H):
        kh, vh = k[:, h // groups], v[:, h // groups]                              # [B, Tk, D]
        s = q[:, h] @ kh.transpose(-1, -2) * scale                               # [B, Tq, Tk]
        if allowed is not None:
            s = s.masked_fill(~allowed[:, 0], float("-inf"))
        out[:, h] = s.softmax(-1) @ vh
    return out


def sharp(shape, seed):
    """Inputs with scores of std ~3, so attention is far from uniform and a wrong key shows."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5


@pytest.fixture(params=[False, True], ids=["cpu-gqa-path", "cuda-expand-path"])
def branch(request, monkeypatch):
    monkeypatch.setattr(attention, "EXPAND_KV_ON_CPU", request.param)
    return request.param


@pytest.mark.parametrize("H,Hkv", [(4, 2), (6, 2), (4, 1)])
def test_prefill_causal_equals_written_out_attention(branch, H, Hkv):
    B, T, D = 2, 7, 8
    q, k, v = sharp((B, H, T, D), 0), sharp((B, Hkv, T, D), 1), sharp((B, Hkv, T, D), 2)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None].expand(B, 1, T, T)
    torch.testing.assert_close(attend(q, k, v, None, is_causal=True), reference(q, k, v, causal))


@pytest.mark.parametrize("H,Hkv", [(4, 2), (6, 3)])
def test_explicit_mask_and_scale_equal_written_out_attention(branch, H, Hkv):
    """A boolean mask with left padding, Tq < Tk (a chunk after a cache) and a non-default scale."""
    B, Tq, Tk, D = 2, 3, 6, 8
    q, k, v = sharp((B, H, Tq, D), 3), sharp((B, Hkv, Tk, D), 4), sharp((B, Hkv, Tk, D), 5)
    allowed = torch.ones(B, 1, Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
    allowed[0, :, :, :2] = False                                                  # row 0: two pads
    got = attend(q, k, v, allowed, is_causal=False, scale=0.3)
    torch.testing.assert_close(got, reference(q, k, v, allowed, scale=0.3))


def test_decode_query_path_equals_written_out_attention(branch):
    """One query per head with a padding mask [B, 1, 1, Tk]: the rows-per-kv-head path."""
    B, H, Hkv, Tk, D = 3, 8, 2, 9, 4
    q, k, v = sharp((B, H, 1, D), 6), sharp((B, Hkv, Tk, D), 7), sharp((B, Hkv, Tk, D), 8)
    allowed = torch.ones(B, 1, 1, Tk, dtype=torch.bool)
    allowed[1, ..., :4] = False
    torch.testing.assert_close(attend(q, k, v, allowed, is_causal=False), reference(q, k, v, allowed))
    torch.testing.assert_close(attend(q, k, v, None, is_causal=False), reference(q, k, v, None))


def test_the_switch_reaches_the_expand_path(monkeypatch):
    """The switch must really change the path taken: with it on, SDPA is never asked for enable_gqa."""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **kw):
        seen.append(kw.get("enable_gqa", False))
        return real(*a, **kw)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    q, k = sharp((1, 4, 5, 8), 0), sharp((1, 2, 5, 8), 1)
    monkeypatch.setattr(attention, "EXPAND_KV_ON_CPU", True)
    attend(q, k, k, None, is_causal=True)
    monkeypatch.setattr(attention, "EXPAND_KV_ON_CPU", False)
    attend(q, k, k, None, is_causal=True)
    assert seen == [False, True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (scripts/gpu_parity.sh runs it there)")
@pytest.mark.parametrize("Tq", [1, 6])
def test_cuda_paths_equal_written_out_attention(Tq):
    """On the GPU itself (no switch): the decode path and the K/V-expanding path, fp32, TF32 off."""
    torch.backends.cuda.matmul.allow_tf32 = False
    B, H, Hkv, Tk, D = 2, 6, 2, 6, 8
    q, k, v = sharp((B, H, Tq, D), 9).float(), sharp((B, Hkv, Tk, D), 10).float(), sharp((B, Hkv, Tk, D), 11).float()
    allowed = torch.ones(B, 1, Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
    allowed[1, ..., :2] = False
    got = attend(q.cuda(), k.cuda(), v.cuda(), allowed.cuda(), is_causal=False).cpu()
    torch.testing.assert_close(got, reference(q, k, v, allowed), atol=1e-5, rtol=1e-5)
