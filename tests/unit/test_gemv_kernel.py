"""The compiled batch-1 GEMV (ocellus/kernels/gemv.cpp, gemv.py) and the decode path through it
(ocellus/infer/gemv_decode.py): the kernel equals a float64 product at shapes its blocking does not divide, greedy
decoding through it gives the plain path's ids and logits, it reads the model's own weights (one copy), steps aside
for anything but one row without a gradient, and the decode path falls back to ATen when it cannot be built."""
import copy
import logging

import pytest
import torch
from torch import nn

from ocellus.errors import ConfigError
from ocellus.infer import gemv_decode, prepack
from ocellus.infer.gemv_decode import GemvGroup, GemvLinear, attach_gemv, detach_gemv, gemv_attached
from ocellus.infer.prepack import FUSED, PackedLinear, prepare_decode, weight_bytes
from ocellus.infer.prepack_int8 import int8_groups
from ocellus.kernels import gemv as gemv_mod
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.lora import inject_lora
from ocellus.nn.quant import Int8Linear, quantize_model, replace_module
from ocellus.nn.rope import RopeConfig

NO_KERNEL = gemv_mod.unavailable_reason()
needs_kernel = pytest.mark.skipif(NO_KERNEL is not None, reason=NO_KERNEL or "")


@pytest.fixture(scope="module")
def ext():
    if NO_KERNEL is not None:
        pytest.skip(NO_KERNEL)
    return gemv_mod.kernel(required=True)       # built once per cache directory; ~40 s the first time


def tiny(dtype=torch.float32, tied=True, bias=False, seed=0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=97, hidden_size=40, intermediate_size=52, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=10, attention_bias=bias,
                        rope=RopeConfig.from_hf({}, 10), tie_word_embeddings=tied)
    model = DecoderLM(cfg).to(dtype).eval()
    if bias:                       # zero-initialised: make a fused bias (and a wrong one) show
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.normal_(0, 0.5)
    return model


IDS = torch.tensor([[5, 17, 3, 60, 2, 9, 44]])


# -- the kernel ----------------------------------------------------------------------------------------------------
def quantized_x(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, n] -> (sx [B, 1], xq [B, n]): the int16 x the VNNI int8 rows read (kernels/gemv_rows.h prepare_x), in
    float32 as the kernel computes it: sx = max|x| / 16383, xq = round-half-even(x * (16383 / max|x|))."""
    m = x.abs().amax(dim=1, keepdim=True)
    inv = torch.where(m > 0, torch.tensor(16383.0) / m, torch.zeros_like(m))
    return m / 16383, torch.round(x * inv)


def has_vnni(ext) -> bool:
    was = ext.use_vnni(True)
    on = ext.use_vnni(was)
    return on


@pytest.mark.parametrize("n", [77, 8, 5, 2051])         # 16-wide steps, an 8-wide step and a tail; 8; a tail only; long
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("avx512", [True, False])      # bf16 rows: the AVX-512 kernel (where the CPU has it), AVX2
@pytest.mark.parametrize("vnni", [True, False])        # int8 rows: x as int16 (VNNI, where the CPU has it), or fp32
def test_kernel_equals_a_float64_product(ext, n, threads, avx512, vnni):
    """Row counts that are not multiples of the 4-row block (13, 6, 301: the last block short, several matrices,
    enough blocks for both threads), fp32 / bf16 weights and int8 codes with their scales, batch 1 and 3. The VNNI
    int8 rows (n >= 64) equal the float64 product of the codes with the quantized x; the others with x itself."""
    g = torch.Generator().manual_seed(n)
    ws = [torch.randn(o, n, generator=g) for o in (13, 6, 301)]
    old, was, was_vnni = torch.get_num_threads(), ext.use_avx512(avx512), ext.use_vnni(vnni)
    quantized = avx512 and vnni and n >= 64 and has_vnni(ext)
    torch.set_num_threads(threads)
    try:
        for batch in (1, 3):
            x = torch.randn(batch, n, generator=g)
            for wd in (torch.float32, torch.bfloat16):
                w = [t.to(wd) for t in ws]
                ref = torch.cat([x.double() @ t.double().T for t in w], dim=1)
                y = ext.gemv(x, w, [])
                assert y.dtype == torch.float32 and y.shape == (batch, 320)
                torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * n ** 0.5)
            codes = [torch.randint(-127, 128, (o, n), generator=g, dtype=torch.int8) for o in (13, 6, 301)]
            scales = [torch.rand(o, generator=g) + 0.01 for o in (13, 6, 301)]
            if quantized:
                sx, xq = quantized_x(x)
                ref = torch.cat([sx.double() * (xq.double() @ c.double().T) * s.double()
                                 for c, s in zip(codes, scales)], dim=1)
            else:
                ref = torch.cat([(x.double() @ c.double().T) * s.double() for c, s in zip(codes, scales)], dim=1)
            torch.testing.assert_close(ext.gemv(x, codes, scales).double(), ref, rtol=1e-5, atol=1e-3 * n ** 0.5)
    finally:
        torch.set_num_threads(old)
        ext.use_avx512(was)
        ext.use_vnni(was_vnni)


def test_vnni_int8_rows_stay_within_the_quantization_bound_and_do_not_overflow(ext):
    """x as int16 moves each output by at most sx / 2 * sum |code| * scale (round to nearest) from the product with
    x itself; rows of 20000 columns of the largest codes against x at its largest (a lane's int32 sum would pass
    2^31 without the kernel's chunks) stay exact; a row of x with inf / NaN reads x as fp32 (the float result)."""
    if not has_vnni(ext):
        pytest.skip("this CPU has no AVX-512 VNNI")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3000, generator=g) * torch.tensor([[1.0], [1e-3]])
    codes, scale = torch.randint(-127, 128, (37, 3000), generator=g, dtype=torch.int8), torch.rand(37) + 0.1
    exact = (x.double() @ codes.double().T) * scale.double()
    sx, _ = quantized_x(x)
    bound = sx.double() / 2 * codes.double().abs().sum(1) * scale.double()
    err = (ext.gemv(x, [codes], [scale]).double() - exact).abs()
    assert (err <= bound * 1.001 + 1e-4).all() and (err > 0).any()        # quantized, within its bound
    n = 20000                                                             # 625 pair sums a lane: 2.6e9 in one int32
    big = torch.full((1, n), 3.0)
    codes = torch.full((5, n), 127, dtype=torch.int8)
    codes[1] = -127
    y = ext.gemv(big, [codes], [torch.ones(5)])
    assert torch.equal(y, torch.tensor([[3.0 * 127 * n, -3.0 * 127 * n] + [3.0 * 127 * n] * 3]))
    x = torch.randn(5, 250, generator=g)                                 # 15 x 16 columns, then a tail of 10
    x[1, 7], x[2, 9], x[3, 245], x[4, 249] = float("inf"), float("nan"), -float("inf"), float("nan")
    codes = torch.randint(-127, 128, (9, 250), generator=g, dtype=torch.int8)
    codes[:, 7] = codes[:, 245] = 1                                       # (inf * 0 would be NaN: keep it inf)
    y = ext.gemv(x, [codes], [torch.ones(9)])
    assert torch.isinf(y[1]).all() and torch.isnan(y[2]).all()            # fp32 x: the inf and the NaN go through
    assert torch.isinf(y[3]).all() and torch.isnan(y[4]).all()            # (in the last n % 16 columns too)
    sx, xq = quantized_x(x[:1])                                            # the finite row: quantized as ever
    torch.testing.assert_close(y[:1].double(), sx.double() * (xq.double() @ codes.double().T), rtol=1e-6, atol=1e-3)


def has_dpbf16(ext) -> bool:
    was = ext.use_dpbf16(True)
    return ext.use_dpbf16(was)


@pytest.mark.parametrize("dp", [True, False])          # bf16 rows: vdpbf16ps (where the CPU has it), shift-and-FMA
@pytest.mark.parametrize("n", [77, 2051])              # 32-wide steps and a tail; long
def test_bf16_rows_with_bf16_x_equal_a_float64_product(ext, dp, n):
    """x holding bf16 values (float32 here, so that the float32 sums show) reads as bf16 pairs through
    vdpbf16ps: the same float64 product as the shift-and-FMA rows, row counts not a multiple of the block, batch 1
    and 3. x that is not a bf16 value must not be rounded to one: those rows read x as it is."""
    if dp and not has_dpbf16(ext):
        pytest.skip("this CPU has no AVX-512 BF16")
    g = torch.Generator().manual_seed(n)
    w = [torch.randn(o, n, generator=g).bfloat16() for o in (13, 6, 301)]
    was = ext.use_dpbf16(dp)
    try:
        for batch in (1, 3):
            for x in (torch.randn(batch, n, generator=g).bfloat16().float(), torch.randn(batch, n, generator=g)):
                ref = torch.cat([x.double() @ t.double().T for t in w], dim=1)
                torch.testing.assert_close(ext.gemv(x, w, []).double(), ref, rtol=1e-5, atol=1e-5 * n ** 0.5)
    finally:
        ext.use_dpbf16(was)


def test_kernel_takes_bf16_activations_and_gives_bf16(ext):
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 77, generator=g).bfloat16(), torch.randn(13, 77, generator=g).bfloat16()
    y = gemv_mod.gemv(x[None], [w])                                       # [1, 1, 77] -> [1, 1, 13]
    assert y.dtype == torch.bfloat16 and y.shape == (1, 1, 13)
    assert torch.equal(y[0], (x.double() @ w.double().T).float().bfloat16())   # fp32 sums, one rounding


def test_kernel_refuses_mismatched_weights(ext):
    x = torch.randn(1, 16)
    with pytest.raises(RuntimeError, match="weight 1 must be"):
        ext.gemv(x, [torch.randn(4, 16), torch.randn(4, 15)], [])
    with pytest.raises(RuntimeError, match="scale"):
        ext.gemv(x, [torch.zeros(4, 16, dtype=torch.int8)], [])


# -- decoding through it -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tied,bias", [(torch.float32, True, False), (torch.float32, False, True),
                                             (torch.bfloat16, True, False)])
@pytest.mark.parametrize("whole_step", [False, True])
def test_greedy_ids_and_logits_equal_the_plain_path(ext, dtype, tied, bias, whole_step, monkeypatch):
    """whole_step=False: the decode steps run the layers, each linear through the kernel (GemvGroup / GemvLinear:
    what a decoder the compiled whole step does not take runs, e.g. Flamingo's); True: the default, the steps run
    compiled whole (infer/fused_decode.py)."""
    if not whole_step:
        monkeypatch.setattr(prepack, "attach_fused_decode", lambda model: 0)
    model, plain = tiny(dtype, tied, bias), tiny(dtype, tied, bias)
    with torch.inference_mode():
        want = plain.generate(IDS, max_new_tokens=12, prepack=False)
        got = model.generate(IDS, max_new_tokens=12, gemv=True)
        assert gemv_attached(model) and torch.equal(got, want)
        step = dict(input_ids=want[:, -1:], position_ids=torch.tensor([[want.shape[1] - 1]]))
        cache_a, cache_b = plain.new_cache(1, 32), model.new_cache(1, 32)
        plain(input_ids=want[:, :-1], cache=cache_a)
        model(input_ids=want[:, :-1], cache=cache_b)               # the prefill: F.linear, many rows
        a, b = plain(**step, cache=cache_a).logits, model(**step, cache=cache_b).logits    # one row: the kernel
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(b, a, **tol)


def test_it_reads_the_models_own_weights(ext):
    """One copy: the q|k|v and gate|up hooks and every other linear read the Parameters in place (the tied head
    the embedding's storage); a weight changed in place is what the next call reads."""
    model = tiny()
    before = weight_bytes(model)
    model.generate(IDS, max_new_tokens=2)                    # the default at batch 1: the kernel
    assert weight_bytes(model) == before
    assert type(model.lm_head) is GemvLinear and model.lm_head.weight is model.embed_tokens.weight
    attn = model.layers[0].self_attn
    assert isinstance(attn.fused_qkv, GemvGroup) and isinstance(model.layers[0].mlp.fused_gate_up, GemvGroup)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    x = torch.randn(1, 1, 40)
    with torch.no_grad():
        attn.k_proj.weight.mul_(2)
        want = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
        torch.testing.assert_close(attn.fused_qkv(x), want, rtol=1e-5, atol=1e-6)


def test_it_steps_aside_for_gradients_many_rows_and_replaced_members(ext):
    model = tiny()
    prepare_decode(model, 1)
    head = model.lm_head
    x = torch.randn(1, 1, 40, requires_grad=True)
    head(x).sum().backward()                                 # F.linear: autograd records it
    assert x.grad is not None and model.embed_tokens.weight.grad is not None
    attn = model.layers[0].self_attn
    rows = torch.randn(3, 1, 40)
    with torch.no_grad():
        torch.testing.assert_close(attn.fused_qkv(rows), torch.cat([attn.q_proj(rows), attn.k_proj(rows),
                                                                     attn.v_proj(rows)], dim=-1))
    calls = []                                              # a prefill's rows stay ATen's GEMM: the kernel not called
    real = gemv_decode.gemv
    gemv_decode.gemv = lambda *a: calls.append(a) or real(*a)
    try:
        with torch.no_grad():
            attn.fused_qkv(rows), head(rows)
            assert calls == []
            attn.fused_qkv(rows[:1]), head(rows[:1])
            assert len(calls) == 2
    finally:
        gemv_decode.gemv = real
    inject_lora(model, [r"layers\.0\.self_attn\.[qkv]_proj"], rank=2, alpha=4)      # the hook's members replaced
    with torch.no_grad():
        for n in ("q_proj", "k_proj", "v_proj"):
            getattr(attn, n).lora_B.normal_()
        want = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
        got = attn.fused_qkv(x)
    torch.testing.assert_close(got, want)
    assert attn.fused_qkv is None                           # and it turned itself off
    copy.deepcopy(model)                                    # a copy decodes plainly


def test_a_lone_linear_keeps_its_bias(ext):
    """A Linear outside the fused groups with a bias (a projection head, a GeluMLP's fc1): the kernel's row plus it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(77, 13), nn.Linear(13, 5, bias=False))
    x = torch.randn(1, 77)
    with torch.no_grad():
        want = net(x)
        assert attach_gemv(net, FUSED) and type(net[0]) is GemvLinear and type(net[1]) is GemvLinear
        torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-6)


def test_batch_above_one_and_no_prepack_detach_it(ext):
    model = tiny()
    prepare_decode(model, 1)
    assert gemv_attached(model)
    prepare_decode(model, 4)                                 # oneDNN's packed weights at batch > 1
    assert not gemv_attached(model) and any(isinstance(m, PackedLinear) for m in model.modules())
    prepare_decode(model, 1)
    assert gemv_attached(model) and not any(isinstance(m, PackedLinear) for m in model.modules())
    prepare_decode(model, 1, prepack=False)                  # the plain path: ATen, nothing attached
    assert not gemv_attached(model) and not any(isinstance(m, PackedLinear) for m in model.modules())
    prepare_decode(model, 1, gemv=False)
    assert not gemv_attached(model)
    prepare_decode(model, 1, prepack=False)
    assert attach_gemv(model, FUSED) and gemv_attached(model)      # by hand, on plain weights
    assert type(detach_gemv(model).lm_head) is nn.Linear and model.layers[0].self_attn.fused_qkv is None


# -- without a kernel ----------------------------------------------------------------------------------------------
def test_without_a_kernel_decoding_falls_back_and_a_request_for_it_is_a_typed_error(monkeypatch, caplog):
    monkeypatch.setattr(gemv_mod, "_state", {})
    monkeypatch.setattr(gemv_mod, "unavailable_reason", lambda: "no C++ compiler ('c++' not on PATH)")
    model, plain = tiny(), tiny()
    with caplog.at_level(logging.WARNING, logger="ocellus.kernels.gemv"):
        got = model.generate(IDS, max_new_tokens=8)
        model.generate(IDS, max_new_tokens=2)
    assert [r.getMessage() for r in caplog.records].count(
        "no C++ compiler ('c++' not on PATH); decoding keeps the ATen linears") == 1       # logged once
    assert not gemv_attached(model)
    assert torch.equal(got, plain.generate(IDS, max_new_tokens=8, prepack=False))
    if prepack.prepack_available():
        assert any(isinstance(m, PackedLinear) for m in model.modules())                   # the oneDNN path
    with pytest.raises(ConfigError, match="no C\\+\\+ compiler"):
        model.generate(IDS, max_new_tokens=2, gemv=True)
    with pytest.raises(ConfigError, match="no C\\+\\+ compiler"):
        gemv_mod.gemv(torch.randn(1, 4), [torch.randn(2, 4)])


def test_a_failed_build_is_logged_once_and_not_retried(monkeypatch, caplog):
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("Error building extension 'ocellus_gemv': g++: fatal error")
    monkeypatch.setattr(gemv_mod, "_state", {})
    monkeypatch.setattr(gemv_mod, "unavailable_reason", lambda: None)
    monkeypatch.setattr(gemv_mod, "_build", broken)
    with caplog.at_level(logging.WARNING, logger="ocellus.kernels.gemv"):
        assert gemv_mod.kernel() is None and gemv_mod.kernel() is None
    assert len(calls) == 1 and len(caplog.records) == 1 and "failed to build" in caplog.records[0].getMessage()
    with pytest.raises(ConfigError, match="g\\+\\+: fatal error"):
        gemv_mod.kernel(required=True)
    model = tiny()
    assert attach_gemv(model, FUSED) is False and not gemv_attached(model)


def test_the_build_is_cached_per_source_text(ext):
    """Later processes reuse the build: its folder is named by the hash of the source and the flags, which
    building leaves as they were, and holds the module."""
    where = gemv_mod.build_directory()
    assert where.name.startswith("ocellus_gemv_") and (where / f"{where.name}.so").is_file()
    assert gemv_mod.CFLAGS == ["-O3", "-mavx2", "-mfma", "-fopenmp"] and gemv_mod.LDFLAGS == ["-fopenmp"]


# -- int8 through it (opt-in) --------------------------------------------------------------------------------------
def dequantized_twin(model):
    """The int8 model's float twin: each Int8Linear an nn.Linear holding codes * scale (the written-out product)."""
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, Int8Linear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=torch.float32)
            with torch.no_grad():
                lin.weight.copy_(m.dequantized_weight(torch.float32))
                if m.bias is not None:
                    lin.bias.copy_(m.bias.float())
            replace_module(twin, name, lin)
    return twin.float()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("whole_step", [False, True])
def test_int8_through_the_kernel_equals_the_written_out_product(ext, bias, whole_step, monkeypatch):
    """gemv=True: an int8 model's fused groups read their codes with unquantized activations: the logits of its
    dequantized float twin (F.linear) to float rounding, the same greedy ids; the default keeps fbgemm's form.
    whole_step: the decoder's steps run compiled whole (infer/fused_decode.py, the default at batch 1), its int8
    layers left unpacked; without it (switched off here) they are the kernel's int8 groups."""
    if not whole_step:
        monkeypatch.setattr(prepack, "attach_fused_decode", lambda model: 0)
    model = quantize_model(tiny(bias=bias))
    twin = dequantized_twin(model)
    with torch.inference_mode():
        model.generate(IDS, max_new_tokens=2)                              # the default: fbgemm / int8pack
        assert {g.kind for g in int8_groups(model)} != {"gemv"}
        want = twin.generate(IDS, max_new_tokens=12, prepack=False)
        got = model.generate(IDS, max_new_tokens=12, gemv=True)
        kinds = set() if whole_step else {"gemv"}
        assert {g.kind for g in int8_groups(model)} == kinds and torch.equal(got, want)
        assert (model.fused_decode is not None) == whole_step
        a, b = twin(input_ids=want).logits, model(input_ids=want).logits     # many rows: the kernel too
    if not whole_step:       # (the whole step's decoder leaves its prefill to the int8 layers' own kernels)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    codes = {n: t.clone() for n, t in model.state_dict().items()}
    model.generate(IDS, max_new_tokens=2)                                  # back to the default form, exactly
    assert {g.kind for g in int8_groups(model)} != {"gemv"}
    assert all(torch.equal(t, codes[n]) for n, t in model.state_dict().items())
