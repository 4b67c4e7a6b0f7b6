"""Breaking a per-example metric down by question type, and printing the result as a table.

The VQA papers report accuracy per answer type ("yes/no", "number", "other") next to the
overall number; `score_by_type` gives that for any per-example metric, e.g.

    scores = score_by_type(records, vqa_soft_score)      # records: [{type, pred, gold}, ...]
    print(format_table(scores, score_name="VQA acc"))

"all" is the mean over every example (a micro average, as vqaEval.py's "overall"), so it is
not the mean of the per-type numbers when the types have different sizes. Corpus-level metrics
(BLEU, CIDEr-D) are not per-example: group the data yourself and call them on each group.
"""

from collections.abc import Callable

from ocellus.errors import InputError

ALL = "all"


def score_by_type(records: list[dict], metric: Callable[..., float]) -> dict[str, tuple[int, float]]:
    """{type: (n, mean score)} over records {"type", "pred", "gold"} scored by
    metric(pred, gold), types in sorted order, then "all": (n, mean) over every record."""
    if not records:
        raise InputError("score_by_type needs at least one record")
    groups: dict[str, list[float]] = {}
    for i, r in enumerate(records):
        missing = [k for k in ("type", "pred", "gold") if k not in r]
        if missing:
            raise InputError(f"record {i} lacks {missing} (need type, pred, gold): {r!r}")
        if r["type"] == ALL:
            raise InputError(f"record {i}: type {ALL!r} is reserved for the overall score")
        groups.setdefault(str(r["type"]), []).append(float(metric(r["pred"], r["gold"])))
    out = {t: (len(s), sum(s) / len(s)) for t, s in sorted(groups.items())}
    every = [x for s in groups.values() for x in s]
    out[ALL] = (len(every), sum(every) / len(every))
    return out


def format_table(scores: dict[str, tuple[int, float]], score_name: str = "score",
                 percent: bool = True, digits: int = 2) -> str:
    """An aligned text table of `score_by_type`'s output (scores x100 when percent=True),
    with "all" last under a rule. Returns the string; print it.

        type   | n | score
        -------+---+------
        number | 2 | 50.00
        -------+---+------
        all    | 2 | 50.00
    """
    scale = 100.0 if percent else 1.0
    rows = [(str(t), str(n), f"{s * scale:.{digits}f}") for t, (n, s) in scores.items() if t != ALL]
    total = [(ALL, str(scores[ALL][0]), f"{scores[ALL][1] * scale:.{digits}f}")] if ALL in scores else []
    header = ("type", "n", score_name)
    widths = [max(len(row[c]) for row in [header, *rows, *total]) for c in range(3)]

    def line(row):
        return f"{row[0]:<{widths[0]}} | {row[1]:>{widths[1]}} | {row[2]:>{widths[2]}}"

    rule = "-+-".join("-" * w for w in widths)
    lines = [line(header), rule, *map(line, rows)]
    if total:
        lines += [rule, line(total[0])]
    return "\n".join(lines)
