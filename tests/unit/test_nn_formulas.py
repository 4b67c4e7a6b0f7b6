"""The small nn formulas, each against transformers or the formula written out here: RMSNorm (fp32
statistics, the weight applied after the cast back, eps inside the root), the MLP activations and
SwiGLU's gate, and the beam-search reorder of both KV caches (every layer, keys and values, rows only)."""
import math

import pytest
import torch

from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.mla import LatentKVCache
from ocellus.nn.mlp import ACTIVATIONS, SwiGLU
from ocellus.nn.norms import RMSNorm


def _rmsnorm_pair(dim, eps, dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    torch.manual_seed(0)
    ours, ref = RMSNorm(dim, eps=eps), LlamaRMSNorm(dim, eps=eps)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(dim) * 0.5 + 1.0)
        ref.weight.copy_(ours.weight)
    return ours.to(dtype), ref.to(dtype)


def test_rmsnorm_bf16_equals_transformers_bit_for_bit():
    """fp32 statistics and weight * x.to(bf16): any other order rounds differently in bf16."""
    ours, ref = _rmsnorm_pair(256, 1e-6, torch.bfloat16)
    torch.manual_seed(1)
    x = (torch.randn(4, 8, 256) * 30.0).to(torch.bfloat16)   # large values: bf16 squares lose digits
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_rmsnorm_eps_is_inside_the_square_root():
    ours, _ = _rmsnorm_pair(16, 1e-2, torch.float32)
    x = torch.randn(3, 16) * 0.05                              # mean square ~ eps: the placement matters
    expected = ours.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-2))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_equal_transformers(name):
    from transformers.activations import ACT2FN
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS[name](x), ACT2FN[name](x), rtol=1e-12, atol=1e-12)


def test_quick_gelu_and_gelu_new_formulas():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS["quick_gelu"](x), x / (1 + torch.exp(-1.702 * x)))
    c = math.sqrt(2 / math.pi)
    torch.testing.assert_close(ACTIVATIONS["gelu_new"](x), 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x ** 3))))


def test_swiglu_gates_with_the_gate_projection():
    torch.manual_seed(0)
    m = SwiGLU(8, 16)
    x = torch.randn(2, 3, 8)
    g, u = x @ m.gate_proj.weight.t(), x @ m.up_proj.weight.t()
    expected = (g * torch.sigmoid(g) * u) @ m.down_proj.weight.t()
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected)


def test_static_cache_reorder_moves_whole_rows_of_every_layer():
    torch.manual_seed(0)
    B, H, T, D, L = 3, 2, 6, 4, 2
    cache = StaticKVCache(L, B, H, T, D)
    ks = [torch.randn(B, H, 4, D) for _ in range(L)]
    vs = [torch.randn(B, H, 4, D) for _ in range(L)]
    for layer in range(L):
        cache.update(layer, ks[layer], vs[layer])
    cache.advance(4)
    index = torch.tensor([2, 0, 0])
    cache.reorder(index)
    for layer in range(L):
        assert torch.equal(cache.k[layer][:, :, :4], ks[layer][index])
        assert torch.equal(cache.v[layer][:, :, :4], vs[layer][index])


def test_latent_cache_reorder_moves_latents_and_rope_keys():
    torch.manual_seed(0)
    cache = LatentKVCache(2, 3, 5, kv_lora_rank=4, qk_rope_head_dim=2)
    cs = [torch.randn(3, 3, 4) for _ in range(2)]
    ps = [torch.randn(3, 3, 2) for _ in range(2)]
    for layer in range(2):
        cache.update(layer, cs[layer], ps[layer])
    cache.advance(3)
    index = torch.tensor([1, 2, 1])
    cache.reorder(index)
    for layer in range(2):
        assert torch.equal(cache.c_kv[layer][:, :3], cs[layer][index])
        assert torch.equal(cache.k_pe[layer][:, :3], ps[layer][index])
