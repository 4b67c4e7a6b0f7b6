"""Smoke test of the decode benchmark (ocellus/bench.py): the quick mode runs end to end and its
rows are well-formed. No timing is asserted: the numbers depend on the machine and its load."""
import math

import torch

from ocellus.bench import (HEADER, bench_decode, count_parameters, format_table, main_decode, plain_weights, read_tensors,
                           streamed)
from ocellus.models.text.decoder import DecoderConfig, DecoderLM


def _check_rows(rows, dtypes, batches):
    assert [(r["dtype"], r["batch"]) for r in rows] == [(d, b) for d in dtypes for b in batches]
    for r in rows:
        for key in ("ocellus", "transformers", "ratio", "ceiling", "of_ceiling", "roofline", "read_gbs", "of_roofline"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert math.isclose(r["ratio"], r["ocellus"] / r["transformers"])
        assert math.isclose(r["of_ceiling"], r["ocellus"] / r["ceiling"])
        assert math.isclose(r["of_roofline"], r["ocellus"] / r["roofline"])
        # B tokens per streaming read of the weights: roofline = B * bandwidth / bytes
        assert math.isclose(r["roofline"], r["batch"] * r["read_gbs"] * 1e9 / r["read_bytes"])
        assert isinstance(r["same_tokens"], bool)


def test_quick_bench_rows_are_well_formed(tmp_path):
    rows = bench_decode(dtypes=("fp32", "bf16"), batches=(1, 2), quick=True, workdir=tmp_path, verbose=False)
    _check_rows(rows, ["fp32", "bf16"], [1, 2])
    assert rows[0]["same_tokens"]  # fp32 greedy on the same weights: the same ids as transformers
    table = format_table(rows).splitlines()
    assert table[0] == HEADER and len(table) == 1 + len(rows)


def test_cli_entry_parses_options_and_writes_json(tmp_path, capsys):
    import json
    out = tmp_path / "rows.json"
    assert main_decode(["--quick", "--dtypes", "fp32", "--batches", "1", "--workdir", str(tmp_path),
                        "--json", str(out)]) == 0
    _check_rows(json.loads(out.read_text()), ["fp32"], [1])
    assert "ours/roofline" in capsys.readouterr().out


def test_the_roofline_reads_each_linear_weight_once():
    """What one decode step must stream: every linear weight (a tied lm_head's is the embedding), nothing else."""
    torch.manual_seed(0)
    cfg = DecoderConfig.from_hf(dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, tie_word_embeddings=True))
    model = DecoderLM(cfg)
    tensors = read_tensors(plain_weights(model))
    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(tensors) == 2 * 7 + 1 and sum(t.numel() for t in tensors) == sum(w.numel() for w in linear)


def test_int8_weights_are_streamed_as_the_same_bytes_in_float32():
    """The roofline's read of int8 codes goes through a float32 view of the same storage (an int8 `.sum()` is an
    integer reduction far below the memory's rate); float tensors and byte counts not divisible by 4 stay as
    they are."""
    codes = torch.randint(-128, 127, (64, 36), dtype=torch.int8)
    view = streamed(codes)
    assert view.dtype == torch.float32 and view.data_ptr() == codes.data_ptr()
    assert view.numel() * 4 == codes.numel() and torch.equal(view.view(torch.int8).view(64, 36), codes)
    weight = torch.randn(8, 8)
    assert streamed(weight) is weight
    odd = torch.zeros(3, 3, dtype=torch.int8)
    assert streamed(odd) is odd


def test_the_roofline_read_pass_streams_int8_codes_as_float32(monkeypatch):
    import ocellus.bench as bench
    summed = []
    real_sum = torch.Tensor.sum
    monkeypatch.setattr(torch.Tensor, "sum", lambda t, *a, **k: summed.append(t.dtype) or real_sum(t, *a, **k))
    bench.read_seconds([torch.zeros(64, 36, dtype=torch.int8), torch.zeros(4, 4)], passes=1)
    assert set(summed) == {torch.float32}


def test_gemv_ab_times_ours_without_the_kernel_in_the_same_rounds(tmp_path, capsys):
    """`--gemv-ab`: each row also holds ours without the compiled GEMV (`--no-gemv`'s path), its ids and the ratio."""
    import json
    out = tmp_path / "rows.json"
    assert main_decode(["--quick", "--dtypes", "fp32", "--batches", "1", "--workdir", str(tmp_path), "--gemv-ab",
                        "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert r["ocellus_nogemv"] > 0 and math.isclose(r["gemv_x"], r["ocellus"] / r["ocellus_nogemv"])
    assert math.isclose(r["of_roofline_nogemv"], r["ocellus_nogemv"] / r["roofline"])
    assert r["same_tokens_nogemv"] is True                 # fp32: the kernel's ids are the plain path's
    assert "without the compiled GEMV" in capsys.readouterr().out


def test_bf16_weights_are_streamed_as_float32_too():
    """A bf16 `.sum()` is a widening reduction (16 GB/s here where the bytes read at 26+): the roofline reads the
    same storage as float32 lanes."""
    w = torch.randn(16, 6).bfloat16()
    view = streamed(w)
    assert view.dtype == torch.float32 and view.data_ptr() == w.data_ptr() and view.numel() * 2 == w.numel()


def _tiny_llama():
    torch.manual_seed(0)
    return DecoderLM(DecoderConfig.from_hf(dict(vocab_size=96, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, tie_word_embeddings=True)))


def test_the_compiled_read_pass_reads_every_lane_once():
    """kernels read_pass: the sum of every float32 lane of every tensor, blocks of 4 x 512 lanes and what they
    leave (sizes off the block), exactly: so nothing is skipped or read twice."""
    from ocellus.kernels.gemv import kernel, unavailable_reason
    if unavailable_reason() is not None or kernel() is None:
        import pytest
        pytest.skip("the compiled kernels cannot be built here")
    ext = kernel()
    g = torch.Generator().manual_seed(0)

    def ints(*shape):       # small whole numbers: every float32 partial sum exact, so one lane missed or doubled shows
        return torch.randint(1, 8, shape, generator=g).float()
    ts = [ints(5000), ints(3, 2048), ints(7), ints(2, 4096)[1]]   # off the 2048-lane block; one; a view
    want = sum(t.double().sum().item() for t in ts)
    assert ext.read_pass(ts) == want


def test_read_seconds_takes_the_faster_of_sum_and_the_compiled_read(monkeypatch):
    import ocellus.bench as bench

    class Ext:
        calls = 0

        def read_pass(self, tensors):
            Ext.calls += 1
            return 0.0
    monkeypatch.setattr(bench, "kernel", lambda: Ext())
    bench.read_seconds([torch.zeros(256)], passes=2)
    assert Ext.calls == 3                       # a warm-up pass and two timed ones
    monkeypatch.setattr(bench, "kernel", lambda: None)
    bench.read_seconds([torch.zeros(256)], passes=2)   # no compiler: `.sum()` alone
    assert Ext.calls == 3


def test_the_roofline_reads_an_int8_models_own_scales_after_packing():
    """The scales read_tensors returns are views of their own: packing (which swaps the buffers' data for
    placeholders) leaves them as they were, contiguous, with the real values."""
    from ocellus.infer.prepack import prepare_decode
    from ocellus.nn.quant import quantize_model
    model = quantize_model(_tiny_llama()).eval()
    tensors = read_tensors(plain_weights(model))
    before = [t.clone() for t in tensors]
    prepare_decode(model, 4)                    # batch 4: the int8 layers pack (placeholders in their buffers)
    assert all(t.is_contiguous() and torch.equal(t, b) for t, b in zip(tensors, before))


def test_count_parameters_counts_int8_codes():
    from ocellus.nn.quant import quantize_model
    model = _tiny_llama()
    n, tied = count_parameters(model), model.lm_head.weight.numel()
    # the codes stand for the weights they replace; the tied head becomes codes of its own beside the embedding
    assert count_parameters(quantize_model(model)) == n + tied
