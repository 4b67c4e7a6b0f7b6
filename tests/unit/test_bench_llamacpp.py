"""`ocellus bench decode --vs llamacpp` (ocellus/bench_llamacpp.py, bench.py) without llama.cpp: the greedy loop
and the bench's plumbing run against a stand-in with bench_llamacpp.LlamaCpp's interface (reset / eval /
last_logits / n_ctx) backed by Ocellus' own forward pass, and LlamaCpp's logits read against a fake context,
so they are checked in the default run; the real llama.cpp is checked in tests/unit/test_gguf_export.py when
llama-cpp-python is installed."""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest
import torch

import ocellus
from ocellus import bench_llamacpp
from ocellus.bench import LLAMA_TINY, bench_decode, build_checkpoint, format_table, header
from ocellus.errors import ConfigError, InputError


class OcellusAsLlama:
    """What greedy() uses of bench_llamacpp.LlamaCpp, computed by an Ocellus model: eval appends tokens,
    last_logits is the last position's logits."""

    def __init__(self, model, n_ctx: int):
        self.model, self._n_ctx = model, n_ctx
        self.reset()

    def n_ctx(self):
        return self._n_ctx

    def reset(self):
        self.tokens, self.n_tokens, self.logits = [], 0, None

    def eval(self, tokens):
        self.tokens += list(tokens)
        self.n_tokens = len(self.tokens)
        with torch.inference_mode():
            self.logits = self.model(torch.tensor([self.tokens])).logits[0, -1].float().numpy()

    def last_logits(self):
        return self.logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_checkpoint(LLAMA_TINY, tmp_path_factory.mktemp("bench"))


def test_greedy_loop_equals_generate(tiny):
    model = ocellus.load(tiny, dtype=torch.float32)
    llm = OcellusAsLlama(model, n_ctx=40)
    ids = torch.randint(3, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    for n in (1, 2, 13):
        assert bench_llamacpp.greedy(llm, ids, n).tolist() == model.generate(ids, max_new_tokens=n).tolist()
    assert llm.n_tokens == 9 + 12     # the last new token is not fed back
    with pytest.raises(InputError, match="batch 1"):
        bench_llamacpp.greedy(llm, ids.repeat(2, 1), 3)
    with pytest.raises(InputError, match="context 40"):
        bench_llamacpp.greedy(llm, ids, 32)


def test_bench_rows_against_llamacpp(tiny, monkeypatch, capsys):
    """--vs llamacpp: each dtype meets its GGUF (converted next to the checkpoint), int8 is added opposite
    q8_0, the rows and table name llama.cpp, greedy ids are compared."""
    opened = []

    def stand_in(gguf_path, threads, n_ctx):
        opened.append(Path(gguf_path).name)
        dtype = torch.bfloat16 if "bf16" in opened[-1] else torch.float32
        return OcellusAsLlama(ocellus.load(tiny, dtype=dtype), n_ctx)

    monkeypatch.setattr(bench_llamacpp, "load_llamacpp", stand_in)
    rows = bench_decode(dtypes=("fp32", "bf16"), batches=(1,), quick=True, workdir=tiny.parent, verbose=False,
                        quantize="int8", vs="llamacpp")
    assert [r["dtype"] for r in rows] == ["fp32", "bf16", "int8"]
    assert opened == [f"{tiny.name}-{t}.gguf" for t in ("f32", "bf16", "q8_0")]
    assert all((tiny.parent / name).exists() for name in opened)
    for r in rows:
        assert r["vs"] == "llamacpp" and "transformers" not in r and r["llamacpp"] > 0
        assert r["ratio"] == pytest.approx(r["ocellus"] / r["llamacpp"])
    assert rows[0]["same_tokens"]   # the stand-in is Ocellus fp32 itself
    table = format_table(rows).splitlines()
    assert table[0] == header("llamacpp") and "llama.cpp tok/s" in table[0] and len(table) == 4


def test_batches_other_than_one_are_refused(tiny):
    with pytest.raises(ConfigError, match="batch 1"):
        bench_decode(dtypes=("fp32",), batches=(1, 8), quick=True, workdir=tiny.parent, verbose=False, vs="llamacpp")
    with pytest.raises(ConfigError, match="unknown reference 'llama'"):
        bench_decode(dtypes=("fp32",), batches=(1,), quick=True, workdir=tiny.parent, verbose=False, vs="llama")


def test_without_llama_cpp_the_extra_is_named(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)   # import llama_cpp -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ocellus\[llamacpp\]'"):
        bench_llamacpp.reference_runner(tiny, "fp32", torch.zeros(1, 4, dtype=torch.long), 1, 32)
    with pytest.raises(ConfigError, match="no GGUF file type matches 'fp16'"):
        bench_llamacpp.gguf_for(tiny, "fp16")


def test_llamacpp_adapter_reads_the_last_logits_from_the_context():
    """LlamaCpp.last_logits: llama_get_logits_ith(ctx, -1) viewed as [n_vocab] floats; the rest is passed on."""
    buf = (ctypes.c_float * 6)(0.5, -1.0, 3.0, 2.0, 7.0, 9.0)
    calls = []

    class Llm:
        ctx = "ctx-pointer"

        def n_vocab(self):
            return 4

        def n_ctx(self):
            return 32

        def reset(self):
            calls.append("reset")

        def eval(self, tokens):
            calls.append(list(tokens))

    def logits_ith(ctx, i):
        calls.append((ctx, i))
        return ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))

    llm = bench_llamacpp.LlamaCpp(Llm(), logits_ith)
    assert llm.n_ctx() == 32
    assert bench_llamacpp.greedy(llm, torch.tensor([[5, 6]]), 2).tolist() == [[5, 6, 2, 2]]
    assert calls == ["reset", [5, 6], ("ctx-pointer", -1), [2], ("ctx-pointer", -1)]
    assert llm.last_logits().tolist() == [0.5, -1.0, 3.0, 2.0]
