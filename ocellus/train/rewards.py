"""Verifiable rewards and the one place reward functions are called.

A reward function is a plain callable (TRL's convention):

    f(prompts: list, completions: list[str], **columns) -> list[float | None]

where `columns` are the prompt rows' extra columns as lists (e.g. answer=[...]). A trained reward model
is used the same way through `reward_model.RewardModel.as_reward_fn`.

`score_completions` calls every function and is strict, so nothing breaks later inside a loss:
  - a function that raises        -> InputError naming the function (the original error chained)
  - a wrong-length result          -> InputError
  - NaN / inf / a non-number       -> InputError naming the function and the completion index
  - None                           -> "not applicable to this sample" (TRL's convention): that function
                                      is left out of the sample's weighted sum; a sample for which EVERY
                                      function returns None raises InputError (it would have no reward)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ocellus.errors import InputError
from ocellus.eval.grounding import iou, parse_boxes
from ocellus.eval.vqa import count_match, parse_count, vqa_exact_match

RewardFn = Callable[..., list]


def count_reward(prompts, completions: list[str], answer: list, **_) -> list[float]:
    """1.0 when the first count in the completion equals the gold count ("3" and "three" both match)."""
    return [count_match(c, str(a)) for c, a in zip(completions, answer)]


def exact_answer_reward(prompts, completions: list[str], answer: list, **_) -> list[float]:
    """1.0 for the VQA-normalised exact answer (counts compared as numbers)."""
    return [count_match(c, a) if str(a).isdigit() else vqa_exact_match(c, str(a))
            for c, a in zip(completions, answer)]


def _first_box(text: str):
    return next((p.box for p in parse_boxes(text) if p.box is not None), None)


def iou_reward(prompts, completions: list[str], answer: list, **_) -> list[float]:
    """IoU of the completion's first well-formed Qwen-VL box with the gold box (0.0 when it writes none)."""
    out = []
    for c, a in zip(completions, answer):
        gold = _first_box(str(a))
        if gold is None:
            raise InputError(f"iou_reward: gold answer {a!r} holds no box")
        pred = _first_box(c)
        out.append(0.0 if pred is None else iou(pred, gold))
    return out


def count_format_reward(prompts, completions: list[str], **_) -> list[float]:
    """1.0 when the completion is a bare number (a shaping reward for the format, no correctness)."""
    return [float(parse_count(c) is not None and c.strip().isdigit()) for c in completions]


REWARDS = {"count": count_reward, "exact": exact_answer_reward, "iou": iou_reward, "count_format": count_format_reward}


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def score_completions(reward_fns: Sequence[RewardFn], prompts: list, completions: list[str], columns: dict,
                      weights: Sequence[float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """-> (rewards [N] float32 = the weighted sum over functions, {function name: mean of its rewards}).
    See the module docstring for how errors, NaN and None are handled."""
    if not reward_fns:
        raise InputError("no reward functions given")
    weights = list(weights) if weights is not None else [1.0] * len(reward_fns)
    if len(weights) != len(reward_fns):
        raise InputError(f"{len(weights)} reward weights for {len(reward_fns)} reward functions")
    n = len(completions)
    for key, values in columns.items():
        if len(values) != n:
            raise InputError(f"column {key!r} has {len(values)} values for {n} completions")
    total = torch.zeros(n, dtype=torch.float32)
    applicable = torch.zeros(n, dtype=torch.bool)
    means = {}
    for fn, w in zip(reward_fns, weights):
        name = _name(fn)
        try:
            values = fn(prompts, completions, **columns)
        except Exception as e:  # noqa: BLE001 - any user code error: re-raised typed, with its origin
            raise InputError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
        if values is None or len(values) != n:
            raise InputError(f"reward function {name!r} returned {None if values is None else len(values)} values "
                             f"for {n} completions")
        got = []
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) and not (
                    isinstance(v, torch.Tensor) and v.numel() == 1):
                raise InputError(f"reward function {name!r} returned {v!r} for completion {i}; expected a number "
                                 f"or None (not applicable)")
            v = float(v)
            if not math.isfinite(v):
                raise InputError(f"reward function {name!r} returned {v} for completion {i} "
                                 f"({completions[i]!r}); rewards must be finite")
            total[i] += w * v
            applicable[i] = True
            got.append(v)
        means[name] = sum(got) / len(got) if got else float("nan")
    if not bool(applicable.all()):
        missing = (~applicable).nonzero().flatten().tolist()
        raise InputError(f"completions {missing[:10]} got None from every reward function: they have no reward")
    return total, means
