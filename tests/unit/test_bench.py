"""Smoke test of the decode benchmark (ocellus/bench.py): the quick mode runs end to end and its
rows are well-formed. No timing is asserted: the numbers depend on the machine and its load."""
import math

from ocellus.bench import HEADER, bench_decode, format_table, main_decode


def _check_rows(rows, dtypes, batches):
    assert [(r["dtype"], r["batch"]) for r in rows] == [(d, b) for d in dtypes for b in batches]
    for r in rows:
        for key in ("ocellus", "transformers", "ratio", "ceiling", "of_ceiling"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert math.isclose(r["ratio"], r["ocellus"] / r["transformers"])
        assert math.isclose(r["of_ceiling"], r["ocellus"] / r["ceiling"])
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
    assert "ocellus tok/s" in capsys.readouterr().out
