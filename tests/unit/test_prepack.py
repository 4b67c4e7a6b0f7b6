"""Prepacked fused oneDNN weights, the default decode path (ocellus/infer/prepack.py): the same logits and
greedy ids as plain F.linear for every decoder shape, packed by default where it applies, never elsewhere."""
import pytest
import torch
from torch import nn

from ocellus.errors import ConfigError
from ocellus.infer import prepack
from ocellus.infer.batching import BatchEngine
from ocellus.infer.prepack import (PackedGroup, PackedLinear, prepack_available, prepack_linears, prepack_supports,
                                   unpack_linears)
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.rope import RopeConfig

pytestmark = pytest.mark.skipif(not prepack_available(), reason="no oneDNN in this PyTorch build")

# (num_key_value_heads, q/k/v bias (Qwen2), tied lm_head)
SHAPES = {"llama-gqa-tied": (2, False, True), "qwen2-bias-untied": (2, True, False), "mqa-untied": (1, False, False),
          "mha-tied": (4, True, True)}


def tiny(dtype=torch.float32, tied=True, seed=0, kv=2, bias=False):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=kv, head_dim=8, attention_bias=bias,
                        rope=RopeConfig.from_hf({}, 8), tie_word_embeddings=tied)
    model = DecoderLM(cfg).to(dtype).eval()
    if bias:   # zero-initialised: make the fused bias (and a wrong split of it) show
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.normal_(0, 0.5)
    return model


def prompts():
    ids = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0                                  # left padding: the masked decode path too
    return ids, mask


def test_packed_weight_gives_the_dense_one_back_exactly():
    """The one-copy design rests on this: to_dense of the packed tensor is the plain weight, bit for bit."""
    g = torch.Generator().manual_seed(0)
    for shape in [(1280, 768), (97, 32), (48, 32)]:
        w = torch.randn(*shape, generator=g)
        for batch in (1, 3, 8):
            assert torch.equal(torch.ops.mkldnn._reorder_linear_weight(w, batch).to_dense(), w)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_fused_logits_and_greedy_ids_equal_plain(shape):
    kv, bias, tied = SHAPES[shape]
    model, plain = tiny(kv=kv, bias=bias, tied=tied), tiny(kv=kv, bias=bias, tied=tied)
    ids, mask = prompts()
    with torch.inference_mode():
        ref = plain(input_ids=ids, attention_mask=mask).logits
        ref_ids = plain.generate(ids, attention_mask=mask, max_new_tokens=12, prepack=False)
        ref_loss = plain(input_ids=ids, labels=ids).loss          # kept-row attention: members called alone
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=12), ref_ids)   # the default
        attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
        assert isinstance(attn.fused_qkv, PackedGroup) and attn.fused_qkv.members == (attn.q_proj, attn.k_proj, attn.v_proj)
        assert isinstance(mlp.fused_gate_up, PackedGroup) and len(mlp.fused_gate_up.members) == 2
        assert isinstance(mlp.down_proj, PackedLinear) and isinstance(attn.o_proj, PackedLinear)
        assert isinstance(model.lm_head, PackedLinear) != tied   # a tied lm_head stays plain (the embedding reads it)
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, ref, atol=1e-5, rtol=0)
        assert torch.allclose(model(input_ids=ids, labels=ids).loss, ref_loss, atol=1e-5, rtol=0)
        assert torch.equal(model.generate(ids, max_new_tokens=8, num_beams=2),
                           plain.generate(ids, max_new_tokens=8, num_beams=2, prepack=False))


def test_tied_lm_head_keeps_the_embedding_whole():
    model = tiny(tied=True)
    emb = model.embed_tokens.weight.detach().clone()
    model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4, gemv=False)   # oneDNN (test_gemv_kernel: gemv)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed_tokens.weight
    assert torch.equal(model.embed_tokens.weight, emb)


def test_generate_packs_by_default_for_its_batch_and_only_where_it_applies(monkeypatch):
    model = tiny(tied=False)
    ids, _ = prompts()
    model.generate(ids, max_new_tokens=3)
    assert {m.group.batch_size for m in model.modules() if isinstance(m, PackedLinear)} == {3}
    model.generate(ids[:1], max_new_tokens=3, num_beams=2)       # beams: two rows per prompt
    assert {m.group.batch_size for m in model.modules() if isinstance(m, PackedLinear)} == {2}
    model.generate(ids, max_new_tokens=3, prepack=False)         # the escape hatch: plain weights
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    training = tiny(tied=False).train()
    training.generate(ids, max_new_tokens=3)                     # a model being trained is left alone
    assert not any(isinstance(m, PackedLinear) for m in training.modules())
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    bf16 = tiny(torch.bfloat16)                                  # AVX2 only: bf16 decodes plain, no error
    bf16.generate(ids, max_new_tokens=3)
    assert not any(isinstance(m, PackedLinear) for m in bf16.modules())


def test_batch_engine_packs_for_its_slots():
    model = tiny()
    BatchEngine(model, tokenizer=None, slots=4, max_len=32)
    assert {m.group.batch_size for m in model.modules() if isinstance(m, PackedLinear)} == {4}
    engine = BatchEngine(model, tokenizer=None, slots=4, max_len=32).start()
    try:   # a job on the engine thread that generates for one row: the engine packs for its slots again after it
        engine.call(lambda: model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2)).result(timeout=60)
        sizes = engine.call(lambda: {m.group.batch_size for m in model.modules() if isinstance(m, PackedLinear)})
        assert sizes.result(timeout=60) == {4}
    finally:
        engine.stop()
    BatchEngine(model, tokenizer=None, slots=4, max_len=32, prepack=False)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_repack_for_another_batch_size_reuses_nothing_stale():
    model = prepack_linears(tiny(), batch_size=1)
    groups = {id(m.group) for m in model.modules() if isinstance(m, PackedLinear)}
    prepack_linears(model, batch_size=1)                          # packed already: nothing redone
    assert {id(m.group) for m in model.modules() if isinstance(m, PackedLinear)} == groups
    prepack_linears(model, batch_size=8)
    assert {m.group.batch_size for m in model.modules() if isinstance(m, PackedLinear)} == {8}
    unpack_linears(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert model.layers[0].self_attn.fused_qkv is None and model.layers[0].mlp.fused_gate_up is None
    with pytest.raises(ConfigError, match="float16"):
        prepack_linears(tiny().to(torch.float16))


def test_a_hooked_projection_is_not_fused_away():
    """A forward hook on q_proj (an attention probe) must still fire: q/k/v then pack one by one."""
    model = tiny()
    seen = []
    model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2, gemv=False)
    assert model.layers[0].self_attn.fused_qkv is None and model.layers[1].self_attn.fused_qkv is not None
    assert isinstance(model.layers[0].self_attn.q_proj, PackedLinear) and len(seen) == 2


def test_bf16_on_a_cpu_without_onednn_bf16_is_a_clear_error(monkeypatch):
    """An AVX2-only CPU: oneDNN cannot reorder bf16 weights; an explicit prepack says so before touching the model."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    model = tiny(torch.bfloat16)
    with pytest.raises(ConfigError, match="bfloat16 kernels"):
        prepack_linears(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert prepack.prepack_supports(torch.float32)


def test_bf16_packs_where_onednn_has_the_kernels():
    if not prepack_supports(torch.bfloat16):
        pytest.skip("this CPU has no oneDNN bfloat16 kernels (AVX2 only)")
    model, plain = tiny(torch.bfloat16), tiny(torch.bfloat16)
    ids, _ = prompts()
    assert torch.equal(model.generate(ids, max_new_tokens=8), plain.generate(ids, max_new_tokens=8, prepack=False))
