"""The decode step's cheaper forms of its small ops give the same bits as the general ones: RoPE through
nn/rope.rotate (tables made once per CosSin), RMSNorm without autograd (in place), and a decoder's cached
one-token steps the full forward's logits and greedy ids, for GQA / MQA, partial rotary, M-RoPE and left
padding."""
import pytest
import torch

from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.mrope import mrope_cos_sin
from ocellus.nn.norms import RMSNorm
from ocellus.nn.rope import CosSin, RopeConfig, RotaryEmbedding, apply_rotary, rotate


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("partial", [1.0, 0.5])
@pytest.mark.parametrize("pair", ["CosSin", "tuple"])
def test_rotate_equals_apply_rotary_bit_for_bit(dtype, partial, pair):
    torch.manual_seed(0)
    rope = RotaryEmbedding(RopeConfig(head_dim=16, partial_rotary_factor=partial))
    pos = torch.randint(0, 500, (2, 3))                                     # rows at different positions
    cos_sin = rope(pos, dtype=dtype)
    if pair == "tuple":
        cos_sin = tuple(cos_sin)
    heads = torch.randn(2, 7, 3, 16).to(dtype) * 3
    x = heads[:, :5]                                                         # a view, as the decode step's q|k
    assert torch.equal(rotate(x, cos_sin), apply_rotary(x, *cos_sin))


def test_rotation_tables_are_made_once_per_step_and_m_rope_keeps_them():
    rope = RotaryEmbedding(RopeConfig(head_dim=16))
    cos_sin = rope(torch.arange(4)[None])
    assert isinstance(cos_sin, CosSin) and cos_sin.rolled() is cos_sin.rolled()   # every layer reads the same
    m = mrope_cos_sin(*rope(torch.arange(4)[None].expand(3, 1, 4)), (2, 3, 3))
    assert isinstance(m, CosSin)
    cos, sin = m
    assert torch.equal(m.rolled()[1][:, 0], torch.cat((-sin[..., :8], sin[..., 8:]), -1))


@pytest.mark.parametrize("dtype,wdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                          (torch.float16, torch.float16), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("dim", [8, 768, 1000])
def test_rmsnorm_without_autograd_equals_the_formula_bit_for_bit(dtype, wdtype, dim):
    torch.manual_seed(dim)
    norm = RMSNorm(dim, eps=1e-2).to(wdtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim) * 0.5 + 1)
    x = (torch.randn(3, 5, dim) * torch.tensor([0.05, 1.0, 30.0])[:, None, None]).to(dtype)  # eps matters in row 0
    with torch.enable_grad():
        want = norm(x)                                                       # the formula, autograd's path
    x0 = x.clone()
    with torch.no_grad():
        got = norm(x)
    assert got.dtype == want.dtype and torch.equal(got, want.detach())
    assert torch.equal(x, x0)                                                # in place only on its own tensors


def _decoder(kv, partial=1.0, mrope=False):
    torch.manual_seed(kv)
    hf = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=kv, head_dim=8, partial_rotary_factor=partial)
    # Qwen2's q/k/v biases; a partial rotation is only read without a model_type whose transformers class rotates the
    # whole head (decoder.WHOLE_HEAD_ROTARY), so that case has Llama's q/k/v/o biases instead
    hf.update(model_type="qwen2") if partial == 1.0 else hf.update(attention_bias=True)
    if mrope:
        hf["rope_scaling"] = {"type": "mrope", "mrope_section": [1, 1, 2]}
    model = DecoderLM(DecoderConfig.from_hf(hf)).eval()
    with torch.no_grad():
        for p in model.parameters():                                         # far from uniform attention
            p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("kv,partial,mrope", [(2, 1.0, False), (1, 1.0, False), (4, 0.5, False), (2, 1.0, True)],
                         ids=["gqa", "mqa", "mha-partial-rotary", "gqa-m-rope"])
def test_cached_steps_give_the_full_forward_logits(kv, partial, mrope):
    """Prefill 5 tokens, then one token per call through the cache (Attention._decode_one): each step's logits
    equal the full forward's at that position, for a left-padded batch of 2."""
    model = _decoder(kv, partial, mrope)
    T, P = 9, 5
    ids = torch.randint(0, 61, (2, T), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :2] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    if mrope:                                                                # the height axis moves on its own
        pos = torch.stack([pos, pos // 2, pos])
    with torch.inference_mode():
        full = model(ids, attention_mask=mask, position_ids=pos).logits       # [2, T, V]
        cache = model.new_cache(2, T)
        out = [model(ids[:, :P], attention_mask=mask[:, :P], position_ids=pos[..., :P], cache=cache).logits[:, -1]]
        for t in range(P, T):
            out.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[..., t:t + 1],
                             cache=cache).logits[:, -1])
    torch.testing.assert_close(torch.stack(out, 1), full[:, P - 1:], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kv", [1, 2])
def test_generate_greedy_ids_equal_a_loop_without_cache(kv):
    """generate (prepacked cached decode, the default) against greedy argmax of a full forward recomputed each
    step with no cache, a left-padded batch of 2."""
    model = _decoder(kv)
    ids = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    got = model.generate(ids, attention_mask=mask, max_new_tokens=10)
    seq, m = ids, mask
    with torch.inference_mode():
        for _ in range(10):
            pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 1)
            nxt = model(seq, attention_mask=m, position_ids=pos).logits[:, -1].argmax(-1)
            seq, m = torch.cat([seq, nxt[:, None]], 1), torch.cat([m, torch.ones_like(m[:, :1])], 1)
    assert torch.equal(got, seq)
