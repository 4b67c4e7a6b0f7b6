"""Smoke test of the serving benchmark (ocellus/bench_serve.py, benchmarks/serve.py): the quick mode runs end to end
on the tiny Llama, in process, beside transformers, and reports every figure. No timing is asserted (the numbers
depend on the machine and its load); what is asserted is what the figures are made of: every request streamed
all its tokens, and the long prompt was prefilled in ceil(200 / 48) chunks with a budget and in one without."""
import json
import math

import torch

from ocellus.bench_serve import as_text, main_serve, word_tokenizer


def test_word_tokenizer_text_is_the_ids(tmp_path):
    tok = word_tokenizer(tmp_path, 300)
    ids = torch.tensor([[1, 17, 255, 299, 42]])
    assert tok.encode(as_text(ids), add_special_tokens=False) == ids[0].tolist()
    assert tok.apply_chat_template([{"role": "user", "content": as_text(ids)}], tokenize=True) == ids[0].tolist()


def test_quick_serve_bench_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "serve.json"
    assert main_serve(["--quick", "--clients", "1,2", "--workdir", str(tmp_path), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    load = res["load"]
    assert [(r["impl"], r["clients"]) for r in load] == [("ocellus (engine)", 1), ("ocellus (engine)", 2),
                                                         ("transformers, one at a time", 1),
                                                         ("transformers, one at a time", 2)]
    for r in load:
        assert r["errors"] == 0 and r["requests"] == r["clients"] and r["tokens"] == 8 * r["clients"], r
        for key in ("tokens_per_s", "latency_p50_s", "latency_p95_s", "ttft_p50_s", "tpot_p50_s", "tpot_p95_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["latency_p50_s"] <= r["latency_p95_s"]
    chunked, whole = res["long"]
    assert (chunked["chunk"], whole["chunk"]) == (48, 0)
    assert chunked["prefill_chunks"] == 2 + math.ceil(200 / 48) and whole["prefill_chunks"] == 2 + 1
    for r in (chunked, whole):
        for key in ("tpot_before_s", "tpot_admitting_s", "longest_gap_s", "long_ttft_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
    assert res["transformers_long_prefill_s"] > 0
    printed = capsys.readouterr().out
    assert "ocellus (engine): 2 clients = " in printed and "their TPOT while it is admitted" in printed
