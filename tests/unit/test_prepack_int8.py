"""Fused int8 decode (ocellus/infer/prepack_int8.py): q|k|v and gate|up of an int8 model run as one quantized
matrix each, with the same logits and greedy ids as the unfused int8 path and as dynamic_int8_reference, one
copy of the codes resident, and save / load / in-place updates / deepcopy / .to seeing the real codes."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import ocellus
from ocellus.errors import ConfigError
from ocellus.infer.prepack import FUSED, prepack_linears, unpack_linears, weight_bytes
from ocellus.infer.prepack_int8 import Int8Group, PackedInt8Linear, int8_groups, pack_int8_linears
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn import quant
from ocellus.nn.quant import Int8Linear, dynamic_int8_reference, quantize_model
from ocellus.nn.rope import RopeConfig

pytestmark = pytest.mark.skipif(not quant.int8_kernel_available(), reason="no CPU int8 kernel in this PyTorch build")

# (num_key_value_heads, q/k/v bias (Qwen2), tied lm_head)
SHAPES = {"llama-gqa-tied": (2, False, True), "qwen2-bias-untied": (2, True, False), "mqa-untied": (1, False, False)}


def tiny(dtype=torch.float32, tied=True, seed=0, kv=2, bias=False):
    """A random decoder with a spread init (std 0.05): logits far from flat, greedy ids decided by real margins."""
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=kv, head_dim=16, attention_bias=bias,
                        rope=RopeConfig.from_hf({}, 16), tie_word_embeddings=tied)
    model = DecoderLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.05)
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.5)          # zero-initialised: make the fused bias (and a wrong split) show
    return quantize_model(model.to(dtype).eval())


def prompts():
    ids = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0                                  # left padding: the masked decode path too
    return ids, mask


def packed(model) -> list[PackedInt8Linear]:
    return [m for m in model.modules() if isinstance(m, PackedInt8Linear)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fused_int8_logits_and_greedy_ids_equal_the_unfused_int8_path(shape, dtype):
    kv, bias, tied = SHAPES[shape]
    model, plain = tiny(dtype, kv=kv, bias=bias, tied=tied), tiny(dtype, kv=kv, bias=bias, tied=tied)
    ids, mask = prompts()
    with torch.inference_mode():
        ref_ids = plain.generate(ids, attention_mask=mask, max_new_tokens=12, prepack=False)
        ref = plain(input_ids=ref_ids).logits
        ref_loss = plain(input_ids=ids, labels=ids).loss          # kept-row attention: q_proj called alone
        out_ids = model.generate(ids, attention_mask=mask, max_new_tokens=12)     # the default: fused, packed
        groups = int8_groups(model)
        assert len(groups) == 2 * 4 + 1                          # qkv, o, gate|up, down per layer + lm_head
        attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
        assert isinstance(attn.fused_qkv, Int8Group) and attn.fused_qkv.sizes == [64, 16 * kv, 16 * kv]
        assert isinstance(mlp.fused_gate_up, Int8Group) and len(mlp.fused_gate_up.sizes) == 2
        kind = "dynamic" if dtype == torch.float32 and quant.dynamic_kernel_available() else \
            "int8pack" if dtype == torch.bfloat16 else "int8pack_bf16"
        assert {g.kind for g in groups} == {kind}
        assert torch.equal(out_ids, ref_ids)
        assert torch.equal(model(input_ids=ref_ids).logits, ref)   # prefill through the fused path too
        assert torch.equal(model(input_ids=ids, labels=ids).loss, ref_loss)
    assert len(packed(model)) == 2 * 7 + 1                          # still packed after all of it


def test_without_fbgemm_fp32_rounds_to_bf16_through_the_fused_codes(monkeypatch):
    """The fallback for CPUs without fbgemm: the fused int8pack form, fed bf16-rounded activations."""
    monkeypatch.setattr(quant, "_DYNAMIC", False)
    model, plain = tiny(), tiny()
    ids, mask = prompts()
    with torch.inference_mode():
        ref_ids = plain.generate(ids, attention_mask=mask, max_new_tokens=10, prepack=False)
        out_ids = model.generate(ids, attention_mask=mask, max_new_tokens=10)
        assert {g.kind for g in int8_groups(model)} == {"int8pack_bf16"}
        assert torch.equal(out_ids, ref_ids)
        assert torch.equal(model(input_ids=ref_ids).logits, plain(input_ids=ref_ids).logits)


@pytest.mark.skipif(not quant.dynamic_kernel_available(), reason="no fbgemm on this CPU")
def test_fused_qkv_is_the_dynamic_int8_product_written_out():
    """One activation quantization for q|k|v together: each member's slice is dynamic_int8_reference of that
    member's codes and scales (the per-tensor activation scale is x's alone, shared by the members)."""
    model = tiny(bias=True)
    attn = model.layers[0].self_attn
    members = [(m.weight.clone(), m.weight_scale.clone(), m.bias.detach().clone())
               for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    pack_int8_linears(model, FUSED)
    x = torch.randn(2, 5, 64) * 3 + 0.5                           # asymmetric: the zero point is not 0
    with torch.inference_mode():
        y = attn.fused_qkv(x)
    ref = torch.cat([dynamic_int8_reference(x.reshape(-1, 64), q, s) + b for q, s, b in members], dim=-1)
    assert y.shape == (2, 5, 64 + 2 * 32)
    assert torch.allclose(y.reshape(-1, y.shape[-1]), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_copy_of_the_codes_while_packed(dtype):
    model = tiny(dtype, tied=False)
    plain = weight_bytes(model)
    with torch.inference_mode():
        model.generate(prompts()[0], max_new_tokens=3, prepack=False)   # unfused: each layer caches fbgemm's copy
        model.generate(prompts()[0], max_new_tokens=3)
    members = packed(model)
    assert len(members) == 2 * 7 + 1
    for m in members:
        w, s = m._buffers["weight"], m._buffers["weight_scale"]
        assert w.untyped_storage().nbytes() == 1 and w.shape == (m.out_features, m.in_features)   # storage gone
        assert s.untyped_storage().nbytes() == 4 and torch.isnan(s).all()   # a dequantisation from it: NaN
        assert m._packed is None                                   # nor the layer's own fbgemm copy
    for g in int8_groups(model):
        assert (g.packed is None) != (g.codes is None)             # one form held, never both
    assert 0.9 * plain <= weight_bytes(model) <= 1.1 * plain, (plain, weight_bytes(model))


def test_save_after_decode_writes_the_same_quantized_checkpoint(tmp_path):
    model = tiny(bias=True, tied=False)
    ocellus.save(model, tmp_path / "before")
    with torch.inference_mode():
        model.generate(prompts()[0], max_new_tokens=2)
    assert packed(model)
    ocellus.save(model, tmp_path / "after")
    assert len(packed(model)) == 2 * 7 + 1                         # saving reads the packed codes, keeps them
    files = sorted(p.name for p in (tmp_path / "before").glob("*.safetensors"))
    assert files
    for name in files:
        before, after = load_file(tmp_path / "before" / name), load_file(tmp_path / "after" / name)
        assert sorted(before) == sorted(after)
        assert before["model.layers.0.self_attn.k_proj.weight"].dtype == torch.int8
        for k in before:
            assert before[k].dtype == after[k].dtype and before[k].numpy().tobytes() == after[k].numpy().tobytes(), k
    loaded = ocellus.load(tmp_path / "after", quantize="int8")
    ids = prompts()[0]
    with torch.inference_mode():
        assert torch.equal(loaded.generate(ids, max_new_tokens=6), model.generate(ids, max_new_tokens=6))


def test_in_place_update_after_decode_then_repack():
    """load_state_dict (and a write through layer.weight_scale) after decoding lands in the real buffers;
    the next decode packs the new codes."""
    model, other = tiny(seed=0, bias=True), tiny(seed=1, bias=True)
    ids = prompts()[0]
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2)
        want = other.generate(ids, max_new_tokens=8, prepack=False)
    assert packed(model)
    model.load_state_dict(other.state_dict())
    assert not packed(model)                                       # loading unpacked the members
    with torch.inference_mode():
        assert torch.equal(model.generate(ids, max_new_tokens=8), want)
    assert packed(model)                                           # and the decode packed them again
    # a write through the attribute: unpacks first, then changes the real scale
    with torch.no_grad():
        model.layers[1].mlp.up_proj.weight_scale.mul_(3.0)
        other.layers[1].mlp.up_proj.weight_scale.mul_(3.0)
    with torch.inference_mode():
        want = other.generate(ids, max_new_tokens=8, prepack=False)
        assert torch.equal(model.generate(ids, max_new_tokens=8), want)
    # a bias changed in place (biases stay Parameters of their own): the fused bias follows
    with torch.no_grad():
        for m in (model, other):
            m.layers[0].self_attn.k_proj.bias.add_(1.0)
    with torch.inference_mode():
        want = other.generate(ids, max_new_tokens=8, prepack=False)
        assert torch.equal(model.generate(ids, max_new_tokens=8), want)
        assert isinstance(model.layers[0].self_attn.k_proj, PackedInt8Linear)


def test_a_buffer_replaced_behind_the_groups_back_is_the_truth():
    model, other = tiny(seed=0), tiny(seed=1)
    ids = prompts()[0]
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2)
        q, q2 = model.layers[0].self_attn.q_proj, other.layers[0].self_attn.q_proj
        q._buffers["weight"].data = q2.weight.clone()              # not through the attribute: no unpack
        q._buffers["weight_scale"].data = q2.weight_scale.clone()
        x = torch.randn(1, 1, 64)
        y = model.layers[0].self_attn.fused_qkv(x)                 # seen: unpacked, the new codes used
        assert not isinstance(q, PackedInt8Linear)
        assert torch.equal(y[..., :64], q2(x))


def test_deepcopy_to_and_escape_hatch_unpack():
    model = tiny()
    ids = prompts()[0]
    with torch.inference_mode():
        want = model.generate(ids, max_new_tokens=6, prepack=False)
        model.generate(ids, max_new_tokens=2)
        assert packed(model)
        twin = copy.deepcopy(model)                                # a plain copy: fbgemm's matrix does not copy
        assert not packed(twin) and all(type(m) is Int8Linear for m in twin.modules() if isinstance(m, Int8Linear))
        assert torch.equal(twin.generate(ids, max_new_tokens=6, prepack=False), want)
        model.generate(ids, max_new_tokens=2)
        model.generate(ids, max_new_tokens=2, prepack=False)       # the escape hatch decodes unfused, unpacked
        assert not packed(model) and model.layers[0].self_attn.fused_qkv is None
        model.generate(ids, max_new_tokens=2)
        model.to(torch.bfloat16)                                   # .to: on the plain buffers, scales stay fp32
        assert not packed(model) and model.lm_head.weight_scale.dtype == torch.float32
        out = model.generate(ids, max_new_tokens=6)
        assert {g.kind for g in int8_groups(model)} == {"int8pack"}
        assert torch.equal(out, model.generate(ids, max_new_tokens=6, prepack=False))


def test_activations_of_another_dtype_repack_the_group_once():
    model = tiny()
    prepack_linears(model)
    g = model.layers[0].self_attn.fused_qkv
    assert g.kind == ("dynamic" if quant.dynamic_kernel_available() else "int8pack_bf16")
    ref = copy.deepcopy(model.layers[0].self_attn)                 # unpacks model's; repack it
    prepack_linears(model)
    g = model.layers[0].self_attn.fused_qkv
    x = torch.randn(1, 3, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        y = g(x)
        assert g.kind == "int8pack" and y.dtype == torch.bfloat16
        want = torch.cat([ref.q_proj(x), ref.k_proj(x), ref.v_proj(x)], dim=-1)
        assert torch.equal(y, want)
        g(x.float())                                               # and back
        assert g.kind == ("dynamic" if quant.dynamic_kernel_available() else "int8pack_bf16")


def test_a_gradient_taking_forward_runs_the_members_written_out():
    model = tiny()
    pack_int8_linears(model, FUSED)
    attn = model.layers[0].self_attn
    x = torch.randn(1, 2, 64, requires_grad=True)
    y = attn.fused_qkv(x)                                          # fbgemm has no backward: unpacked
    assert attn.fused_qkv is None and type(attn.q_proj) is Int8Linear and isinstance(attn.o_proj, PackedInt8Linear)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_layers_that_cannot_be_packed_are_named_or_left_plain():
    model = tiny().half()                                          # no CPU int8 kernel takes fp16 activations
    with pytest.raises(ConfigError, match="no CPU int8 kernel takes torch.float16"):
        prepack_linears(model)
    assert not packed(model)
    pack_int8_linears(model, FUSED, strict=False)                 # the decode default: left as they are
    assert not packed(model)
    bad = tiny()
    bad.layers[0].mlp.down_proj.weight = bad.layers[0].mlp.down_proj.weight.float()
    with pytest.raises(ConfigError, match="must be int8"):
        pack_int8_linears(bad, FUSED)
    with pytest.raises(ConfigError, match="no CPU int8 kernel form"):
        Int8Group([tiny().lm_head], "int4")


def test_members_that_differ_or_carry_hooks_pack_one_by_one():
    model = tiny()
    model.layers[0].self_attn.k_proj.register_forward_hook(lambda *a: None)
    mixed = tiny()
    mixed.layers[0].mlp.up_proj = nn.Linear(64, 96)                # half quantized: nothing to fuse
    for m in (model, mixed):
        pack_int8_linears(m, FUSED)
    assert model.layers[0].self_attn.fused_qkv is None and model.layers[1].self_attn.fused_qkv is not None
    assert isinstance(model.layers[0].self_attn.k_proj, PackedInt8Linear)
    assert mixed.layers[0].mlp.fused_gate_up is None and isinstance(mixed.layers[0].mlp.gate_proj, PackedInt8Linear)
    unpack_linears(model)
    assert not packed(model) and model.layers[1].self_attn.fused_qkv is None


def test_plan_is_idempotent_and_the_int8_module_is_used():
    model = tiny()
    pack_int8_linears(model, FUSED)
    groups = int8_groups(model)
    pack_int8_linears(model, FUSED)                                # packed this way already: the same groups
    assert [id(g) for g in int8_groups(model)] == [id(g) for g in groups]
