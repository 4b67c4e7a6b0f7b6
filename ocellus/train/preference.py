"""Post-training data: preference pairs and prompt-only rows, with images (TRL's dataset formats).

Preference rows (reward models, DPO):
    explicit prompt  {"prompt": [...messages] | str, "chosen": str | [assistant msg], "rejected": ..., "images": [...]}
    implicit prompt  {"chosen": [...full conversation], "rejected": [...full conversation], "images": [...]}
                     the prompt is the messages both conversations share; what follows must be one
                     assistant reply on each side (TRL's `maybe_extract_prompt`, done on messages)
Prompt-only rows (GRPO, PPO):
    {"prompt": [...] | str, "images": [...], **columns}     the extra columns (e.g. "answer") are passed
                                                           to the reward functions by name

Every row is checked when it is read (`preference_pair`, `prompt_row`): an empty completion, chosen ==
rejected (a pair that teaches nothing and gives a zero DPO gradient), a prompt that does not end on a
user turn, or an image count that differs from the image parts raises InputError naming the row.

`shapes_preference` / `shapes_prompt` make such rows from the shapes ground truth: the correct short
answer vs a plausible wrong one (a count off by one, another colour or shape of the palette, the
flipped yes/no or side), and counting / grounding prompts with their gold answer as a column.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ocellus.data.messages import normalize, validate
from ocellus.errors import InputError
from ocellus.data.shapes import COLOURS, sample_at, SHAPES
from ocellus.eval.harness import predict
from ocellus.train.rewards import exact_answer_reward
from ocellus.train.rollout import encode_completions


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[dict]          # normal-form messages, ending on a user turn
    chosen: str                 # the preferred assistant reply (text)
    rejected: str               # the dispreferred one
    images: list[Any] = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # other columns of the row (kept for reports, e.g. "type")


@dataclass(frozen=True)
class PromptRow:
    prompt: list[dict]
    images: list[Any] = field(default_factory=list)
    columns: dict = field(default_factory=dict)  # passed to reward functions as keyword lists


def _where(row) -> str:
    return f"preference row {row}" if row is not None else "preference row"


def _reply_text(value, what: str, row) -> str:
    """A completion given as text or as one assistant message -> its text (images in a reply are refused)."""
    if isinstance(value, str):
        text = value
    else:
        messages = normalize(value if isinstance(value, list) else [value], row=row)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise InputError(f"{_where(row)}: {what} must be one assistant reply, got roles "
                             f"{[m['role'] for m in messages]}")
        if any(p["type"] != "text" for p in messages[0]["content"]):
            raise InputError(f"{_where(row)}: {what} holds an image part; completions are text")
        text = "".join(p["text"] for p in messages[0]["content"])
    if not text.strip():
        raise InputError(f"{_where(row)}: {what} is empty; a preference needs two non-empty completions")
    return text


def _prompt(value, row, what: str = "prompt") -> list[dict]:
    messages = normalize([{"role": "user", "content": value}] if isinstance(value, str) else value, row=row)
    if messages[-1]["role"] != "user":
        raise InputError(f"{_where(row)}: the {what} must end on a user turn (the reply is the completion), "
                         f"it ends on {messages[-1]['role']!r}")
    return messages


def _split_implicit(chosen, rejected, row) -> tuple[list[dict], Any, Any]:
    """Full conversations -> (shared prompt messages, chosen reply, rejected reply)."""
    c, r = normalize(chosen, row=row), normalize(rejected, row=row)
    shared = 0
    while shared < min(len(c), len(r)) and c[shared] == r[shared]:
        shared += 1
    if shared == 0:
        raise InputError(f"{_where(row)}: implicit prompt: chosen and rejected share no leading message")
    if len(c) - shared != 1 or len(r) - shared != 1:
        raise InputError(f"{_where(row)}: implicit prompt: after the {shared} shared messages each side must hold "
                         f"exactly one assistant reply, got {len(c) - shared} (chosen) and {len(r) - shared} "
                         f"(rejected)" + ("; chosen and rejected are identical" if c == r else ""))
    return c[:shared], c[shared:], r[shared:]


def preference_pair(row: dict, index=None) -> PreferencePair:
    """A TRL preference row (explicit or implicit prompt) -> PreferencePair, checked."""
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise InputError(f"{_where(index)}: needs 'chosen' and 'rejected' (and 'prompt' unless implicit)")
    if "prompt" in row:
        prompt = _prompt(row["prompt"], index)
        chosen, rejected = row["chosen"], row["rejected"]
    else:
        prompt, chosen, rejected = _split_implicit(row["chosen"], row["rejected"], index)
    chosen, rejected = _reply_text(chosen, "chosen", index), _reply_text(rejected, "rejected", index)
    if chosen.strip() == rejected.strip():
        raise InputError(f"{_where(index)}: chosen and rejected are the same completion ({chosen!r}); the pair "
                         f"carries no preference (its DPO loss is log 2 with zero gradient): drop or fix it")
    images = list(row.get("images") or [])
    validate(prompt, num_images=len(images), row=index)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "images")}
    return PreferencePair(prompt, chosen, rejected, images, extra)


def prompt_row(row: dict, index=None) -> PromptRow:
    """A prompt-only row -> PromptRow; every other column is kept for the reward functions."""
    if not isinstance(row, dict) or "prompt" not in row:
        raise InputError(f"prompt row {index}: needs 'prompt'")
    prompt = _prompt(row["prompt"], index)
    images = list(row.get("images") or [])
    validate(prompt, num_images=len(images), row=index)
    return PromptRow(prompt, images, {k: v for k, v in row.items() if k not in ("prompt", "images")})


# ---- rows from the shapes ground truth -----------------------------------------------------------

_FLIP = {"yes": "no", "no": "yes", "left": "right", "right": "left", "above": "below", "below": "above"}


def plausible_wrong(sample: dict, rng: np.random.Generator, colours=None, shapes=None) -> str:
    """A wrong answer of the same kind as a shapes QA sample's gold answer: a count off by one, another
    colour / shape (one in the scene when there is one), the other yes/no or side."""
    gold, kind = sample["answer"], sample["type"]
    if kind == "count":
        n = int(gold)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    if gold in _FLIP:
        return _FLIP[gold]
    pool = {"colour": colours or COLOURS, "shape": shapes or SHAPES}.get(kind)
    if pool is None:
        raise InputError(f"no plausible wrong answer for a {kind!r} sample (answer {gold!r})")
    attr = "colour" if kind == "colour" else "shape"
    in_scene = sorted({o[attr] for o in sample["objects"]} - {gold})
    others = in_scene or sorted(set(pool) - {gold})
    return others[int(rng.integers(len(others)))]


def shapes_preference(cfg, index: int) -> dict:
    """A preference row for shapes QA sample `index`: chosen = the gold answer, rejected = a plausible
    wrong one; explicit prompt, the image in "images", the QA type in "type"."""
    s = sample_at(cfg, index, "qa")
    rng = np.random.default_rng([cfg.seed, index, 1])
    wrong = plausible_wrong(s, rng, cfg.colours, cfg.shapes)
    return {"prompt": [s["messages"][0]], "chosen": s["answer"], "rejected": wrong, "images": s["images"],
            "type": s["type"]}


def shapes_prompt(cfg, index: int, kind: str = "qa") -> dict:
    """A prompt-only row for RL: the user turn of shapes sample `index` (kind qa or grounding), its image,
    and the gold answer in "answer" (a count, a word, or a Qwen-VL box string), plus its "type"."""
    s = sample_at(cfg, index, kind)
    return {"prompt": [s["messages"][0]], "images": s["images"], "answer": s["answer"], "type": s["type"]}


def collate_pairs(processor):
    """-> collate(list[PreferencePair]) -> one batch of 2B rows, the B chosen then the B rejected
    completions of the same prompts and images (rollout's prompt + completion layout)."""

    def collate(pairs: list[PreferencePair]) -> dict:
        prompts = [p.prompt for p in pairs] * 2
        images = [p.images for p in pairs] * 2
        return encode_completions(processor, prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], images)
    return collate


def with_model_rejections(model, processor, rows: list[dict], batch_size: int = 32) -> tuple[list[dict], float]:
    """On-policy hard negatives: each shapes preference row's rejected answer becomes the model's own greedy
    answer where that is wrong by the ground truth (the plausible wrong answer stays where the model is
    right, or where its answer is empty). -> (rows, share of rows whose rejected answer came from the model)."""
    samples = [{"messages": r["prompt"], "images": r["images"]} for r in rows]
    answers = predict(model.eval(), processor, samples, [], max_new_tokens=6, batch_size=batch_size)
    right = exact_answer_reward(None, answers, [r["chosen"] for r in rows])
    out, mined = [], 0
    for row, answer, ok in zip(rows, answers, right):
        if not ok and answer.strip() and answer.strip() != row["chosen"]:
            row, mined = {**row, "rejected": answer.strip()}, mined + 1
        out.append(row)
    return out, mined / max(1, len(rows))
