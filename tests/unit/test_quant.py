"""Weight-only int8 (ocellus/nn/quant.py, hub/checkpoint.py quantize="int8"): the layer computes the
dequantised-weight product, quantized checkpoints round-trip as safetensors, a quantized dir is never read
as float weights, greedy decoding agrees with the float model, and `--quantize int8` reaches the model."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ocellus
from ocellus.errors import CheckpointError, ConfigError
from ocellus.hub.safetensors_io import checkpoint_files, read_tensors
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.quant import Int8Linear, dynamic_int8_reference, dynamic_kernel_available, quantize_model, quantize_weight
from ocellus.nn.rope import RopeConfig


def tiny(tied=True, seed=0, std=0.05, layers=2):
    """A random decoder with a spread init (std 0.05, not 0.02): its logits are far from flat, so greedy
    ids are decided by real margins and agreement measures the quantization, not ties. (Much wider, e.g.
    std 0.2, a random 3-layer stack turns chaotic: bf16 alone then flips 3-4% of the ids.)"""
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=211, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                        rope=RopeConfig.from_hf({}, 16), tie_word_embeddings=tied)
    model = DecoderLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std)
    return model.eval()


def test_int8_linear_is_the_dequantised_matmul_written_out():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=True)
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-2, 1, 40)[:, None])      # rows of very different size: per-row scales matter
    q = Int8Linear.from_linear(lin)
    w = lin.weight.detach()
    # by hand: one scale per output row = max |row| / 127, codes rounded to nearest
    scale = w.abs().amax(dim=1) / 127
    codes = torch.round(w / scale[:, None]).clamp(-127, 127)
    assert torch.equal(q.weight, codes.to(torch.int8))
    assert torch.allclose(q.weight_scale, scale, rtol=1e-6, atol=0)
    x = torch.randn(3, 5, 96)
    by_hand = x @ (codes * scale[:, None]).T + lin.bias.detach()
    with torch.inference_mode():
        # fp32 input: activations quantized to 7 bits per tensor (fbgemm) or rounded to bf16: ~1% agreement
        out = q(x)
        assert out.shape == (3, 5, 40) and out.dtype == torch.float32
        assert torch.allclose(out, by_hand, rtol=2e-2, atol=2e-2 * by_hand.abs().max().item())
    # the written-out path (what a gradient-taking or non-CPU call runs) is that product exactly
    xg = x.clone().requires_grad_(True)
    out_grad = q(xg)
    assert torch.allclose(out_grad, by_hand, rtol=1e-5, atol=1e-5)
    out_grad.sum().backward()                                     # gradients reach x through the int8 layer
    assert torch.allclose(xg.grad, (codes * scale[:, None]).sum(0).expand_as(x), rtol=1e-5, atol=1e-5)
    # bf16 activations through the kernel: the bf16 input times the int8 codes, scaled per row
    xb = x.to(torch.bfloat16)
    with torch.inference_mode():
        outb = q.to(torch.bfloat16)(xb)
    ref_b = xb.float() @ (codes * scale[:, None]).T + lin.bias.detach().bfloat16().float()
    assert outb.dtype == torch.bfloat16
    assert torch.allclose(outb.float(), ref_b, rtol=1e-2, atol=1e-2 * ref_b.abs().max().item())
    # stated tolerance against the fp32 layer: per-channel int8 error <= scale / 2 per weight
    with torch.inference_mode():
        ref = lin(x)
    bound = (x.abs() @ (scale[:, None] / 2).expand_as(w).T).max().item()
    assert (out_grad.detach() - ref).abs().max().item() <= bound + 1e-5


@pytest.mark.skipif(not dynamic_kernel_available(), reason="no fbgemm on this CPU")
@pytest.mark.parametrize("width,rows", [(96, 3), (768, 1), (20, 5), (6, 2)])
def test_float32_cpu_path_is_the_dynamic_int8_product_written_out(width, rows):
    """fp32 activations: x quantized per tensor to 7-bit codes, exact integer sums, scaled by both scales
    (dynamic_int8_reference). 8-bit codes (no reduce_range) saturate on AVX2 and miss this by ~10%."""
    torch.manual_seed(width)
    q = Int8Linear.from_linear(nn.Linear(width, 48, bias=True))
    x = torch.randn(rows, width) * 3 + 0.5                    # asymmetric: the zero point is not 0
    with torch.inference_mode():
        out = q(x)
    ref = dynamic_int8_reference(x, q.weight, q.weight_scale) + q.bias.detach()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_float32_without_fbgemm_rounds_activations_to_bf16_through_int8pack(monkeypatch):
    """The fallback for CPUs without fbgemm: the int8pack kernel on bf16-rounded activations, scaled per row."""
    import ocellus.nn.quant as quant
    monkeypatch.setattr(quant, "_DYNAMIC", False)
    torch.manual_seed(3)
    lin = nn.Linear(64, 24, bias=False)
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-2, 1, 24)[:, None])     # per-row scales matter
    q = Int8Linear.from_linear(lin)
    x = torch.randn(4, 64)
    ref = x.bfloat16().float() @ q.dequantized_weight().T
    with torch.inference_mode():
        out = q(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_new_scales_loaded_in_place_are_used(dtype):
    """The scale cast to the activation dtype and fbgemm's packed weight are cached; load_state_dict writes in
    place and must show."""
    torch.manual_seed(0)
    a, b = Int8Linear.from_linear(nn.Linear(32, 16)), Int8Linear.from_linear(nn.Linear(32, 16))
    x = torch.randn(2, 32, dtype=dtype)
    a.to(dtype), b.to(dtype)
    with torch.no_grad():
        a(x)                                                     # fills a's cache
        a.load_state_dict(b.state_dict())
        assert torch.equal(a(x), b(x))


def test_zero_rows_and_extremes():
    w = torch.zeros(4, 8)
    w[1, 3] = -5.0
    w[2] = torch.linspace(-1, 1, 8)
    q, s = quantize_weight(w)
    assert s[0].item() == 1.0 and torch.all(q[0] == 0)           # an all-zero row: no division by zero
    assert q[1, 3].item() == -127 and q[2].abs().max().item() == 127


def test_quantize_model_covers_the_decoder_linears_only():
    model = tiny()
    quantize_model(model)
    n_q = sum(isinstance(m, Int8Linear) for m in model.modules())
    assert n_q == 2 * 7 + 1                                        # q k v o gate up down per layer + lm_head
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.embed_tokens.weight.dtype == torch.float32        # embeddings and norms stay float
    assert model.norm.weight.dtype == torch.float32
    plain = quantize_model(tiny(), lm_head=False)
    assert type(plain.lm_head) is nn.Linear and plain.lm_head.weight is plain.embed_tokens.weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_gives_identical_logits(tmp_path, dtype):
    # the float model through a plain save/load first: `.to(bfloat16)` on a built model also casts the
    # rotary inv_freq buffer, which a load keeps in fp32 (a plain bf16 round trip differs by that alone)
    ocellus.save(tiny(tied=True).to(dtype), tmp_path / "f")
    model = quantize_model(ocellus.load(tmp_path / "f"))
    ocellus.save(model, tmp_path / "q")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "ocellus_int8"
    assert cfg["quantization_config"]["bits"] == 8 and cfg["quantization_config"]["group"] == "per_channel"
    tensors = read_tensors(checkpoint_files(tmp_path / "q"))
    assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == torch.int8
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"].shape == (64,)
    assert tensors["lm_head.weight"].dtype == torch.int8           # a tied lm_head, quantized, gets its own tensor
    assert tensors["model.embed_tokens.weight"].dtype == dtype
    loaded = ocellus.load(tmp_path / "q", quantize="int8")
    assert sum(isinstance(m, Int8Linear) for m in loaded.modules()) == 15
    assert loaded.embed_tokens.weight.dtype == dtype
    ids = torch.randint(0, 211, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    # a float checkpoint quantized on load = the model quantized in memory
    on_load = ocellus.load(tmp_path / "f", quantize="int8")
    with torch.inference_mode():
        assert torch.equal(on_load(input_ids=ids).logits, model(input_ids=ids).logits)


def test_quantized_dir_is_refused_as_plain_weights(tmp_path):
    ocellus.save(quantize_model(tiny()), tmp_path / "q")
    with pytest.raises(CheckpointError, match="int8.*quantize='int8'"):
        ocellus.load(tmp_path / "q")
    with pytest.raises(ConfigError, match="unknown quantize"):
        ocellus.load(tmp_path / "q", quantize="int4")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    cfg["quantization_config"]["quant_method"] = "gptq"
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    for quantize in ("int8", None):   # a method Ocellus cannot read: named, whatever quantize asks
        with pytest.raises(ConfigError, match="quant_method 'gptq' is not one Ocellus reads"):
            ocellus.load(tmp_path / "q", quantize=quantize)


def test_greedy_agreement_with_the_float_model():
    """>= 95% of greedy tokens equal over seeded prompts (teacher-forced: each position scored on the float
    model's own continuation, so one early flip does not count every later token)."""
    ref = tiny(seed=0, layers=3)
    q = quantize_model(tiny(seed=0, layers=3))
    g = torch.Generator().manual_seed(5)
    prompts = torch.randint(0, 211, (8, 12), generator=g)
    with torch.inference_mode():
        cont = ref.generate(prompts, max_new_tokens=24)
        same_free = (q.generate(prompts, max_new_tokens=24)[:, 12:] == cont[:, 12:]).float().mean().item()
        a = ref(input_ids=cont).logits[:, 11:-1].argmax(-1)
        b = q(input_ids=cont).logits[:, 11:-1].argmax(-1)
    agree = (a == b).float().mean().item()
    assert agree >= 0.95, agree
    assert same_free >= 0.5, same_free                               # free-running: a flip changes the rest


def test_cli_quantize_flag_reaches_the_model(tmp_path, monkeypatch, capsys):
    from ocellus.cli import main
    from ocellus.demo import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path / "tiny")
    seen = []
    real_load = ocellus.load

    def spy(*a, **k):
        seen.append(real_load(*a, **k))
        return seen[-1]

    monkeypatch.setattr(ocellus, "load", spy)
    args = ["generate", "--model", str(path), "--max-new-tokens", "4", "hello"]
    assert main(args + ["--quantize", "int8"]) == 0
    assert any(isinstance(m, Int8Linear) for m in seen[-1].modules())
    assert main(args) == 0
    assert not any(isinstance(m, Int8Linear) for m in seen[-1].modules())
    capsys.readouterr()
    # a quantized dir: read with the flag, refused without it (one line, exit 2)
    model = real_load(path, quantize="int8")
    ocellus.save(model, tmp_path / "q")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (path / f).exists():
            (tmp_path / "q" / f).write_bytes((path / f).read_bytes())
    qargs = ["generate", "--model", str(tmp_path / "q"), "--max-new-tokens", "4", "hello"]
    assert main(qargs + ["--quantize", "int8"]) == 0
    assert main(qargs) == 2
    assert "CheckpointError" in capsys.readouterr().err


@pytest.mark.parametrize("width", [4, 6, 12, 20])
def test_input_widths_the_kernel_cannot_take_use_the_written_out_product(width):
    """aten._weight_int8pack_mm reads the input dimension in blocks of 8 on CPU: other widths gave wrong sums (4,
    12, 20) or killed the process (6). Such layers (a tiny head, an MoE router) take the written-out product."""
    torch.manual_seed(1)
    lin = nn.Linear(width, 16, bias=False)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(3, width)
    by_hand = x @ q.dequantized_weight().T
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            out = q.to(dtype)(x.to(dtype)).float()
            assert torch.allclose(out, by_hand, rtol=2e-2, atol=2e-2 * by_hand.abs().max().item()), (width, dtype)
