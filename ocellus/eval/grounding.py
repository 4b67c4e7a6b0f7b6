"""Visual grounding: read the boxes a Qwen-VL-style model writes, IoU, and accuracy at an IoU
threshold (acc@0.5, the RefCOCO/RefCOCO+/RefCOCOg metric).

Qwen-VL (Bai et al. 2023) writes a referring phrase and its box(es) as text:
    <ref>red circle</ref><box>(x1,y1),(x2,y2)</box>
with integer corners (top-left, bottom-right) normalised to [0, 1000) whatever the image size;
one <ref> may be followed by several <box>es. Qwen2-VL spells the same with special tokens
(<|object_ref_start|>...<|object_ref_end|><|box_start|>...<|box_end|>); both are read.
Qwen-VL's evaluate_grounding.py takes the first box of the answer and counts a hit when
IoU >= 0.5; `grounding_accuracy` does the same.

IoU is unchanged when x and y are scaled by (different) constants, so scores computed in the
[0, 1000) space equal those in pixels provided the gold boxes are mapped the same way.
Boxes are continuous (x1, y1, x2, y2) rectangles: area = (x2 - x1) * (y2 - y1), no "+1" pixel.
"""

import re
from dataclasses import dataclass

from ocellus.errors import InputError

COORD_LIMIT = 1000  # coordinates live in [0, COORD_LIMIT)

_QWEN2_TAGS = {"<|object_ref_start|>": "<ref>", "<|object_ref_end|>": "</ref>",
               "<|box_start|>": "<box>", "<|box_end|>": "</box>"}
# A <ref>...</ref>, or a <box> up to its </box>; a <box> left open ends at the next tag or at
# the end of the text so that it can be reported instead of swallowing what follows.
_TAG = re.compile(r"<ref>(?P<ref>.*?)</ref>"
                  r"|<box>(?P<box>.*?)(?P<close></box>|(?=<box>|<ref>)|\Z)", re.S)
_INT = r"\s*(-?\d+)\s*"
_CORNERS = re.compile(rf"\s*\({_INT},{_INT}\)\s*,\s*\({_INT},{_INT}\)\s*")

Box = tuple[int, int, int, int]  # (x1, y1, x2, y2)


@dataclass(frozen=True)
class ParsedBox:
    ref: str | None      # the <ref> phrase written before this box, if any
    box: Box | None      # None when the box is malformed
    reason: str | None   # why it is malformed (None when box is set)


def _read_box(body: str) -> tuple[Box | None, str | None]:
    m = _CORNERS.fullmatch(body)
    if m is None:
        return None, f"expected '(x1,y1),(x2,y2)' with integer coordinates, got {body!r}"
    x1, y1, x2, y2 = map(int, m.groups())
    for v in (x1, y1, x2, y2):
        if not 0 <= v < COORD_LIMIT:
            return None, f"coordinate {v} outside [0, {COORD_LIMIT}) in {body!r}"
    if x2 < x1 or y2 < y1:
        return None, f"corners must be top-left then bottom-right, got {body!r}"
    return (x1, y1, x2, y2), None


def parse_boxes(text: str) -> list[ParsedBox]:
    """Every <box> in `text`, in order, with the <ref> phrase before it (None if none).
    A malformed box (bad numbers, out of range, inverted corners, no </box>) is returned with
    box=None and a reason, rather than dropped, so callers can count and report it.

    >>> parse_boxes("<ref>red circle</ref><box>(10,20),(300,400)</box>")
    [ParsedBox(ref='red circle', box=(10, 20, 300, 400), reason=None)]
    """
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}: {text!r}")
    for tok, tag in _QWEN2_TAGS.items():
        text = text.replace(tok, tag)
    out, ref = [], None
    for m in _TAG.finditer(text):
        if m.group("ref") is not None:
            ref = m.group("ref").strip()
            continue
        if m.group("close") != "</box>":
            out.append(ParsedBox(ref, None, f"<box> without </box>: {m.group(0)!r}"))
            continue
        box, reason = _read_box(m.group("box"))
        out.append(ParsedBox(ref, box, reason))
    return out


def _as_box(b, what: str) -> Box:
    """Validate a box given as 4 numbers (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2."""
    if isinstance(b, str) or not hasattr(b, "__len__") or len(b) != 4:
        raise InputError(f"{what} must be (x1, y1, x2, y2), got {b!r}")
    x1, y1, x2, y2 = (float(v) for v in b)
    if x2 < x1 or y2 < y1:
        raise InputError(f"{what} {b!r} has x2 < x1 or y2 < y1 (want top-left, bottom-right)")
    return x1, y1, x2, y2


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0.0 when the union has no area."""
    ax1, ay1, ax2, ay2 = _as_box(a, "box a")
    bx1, by1, bx2, by2 = _as_box(b, "box b")
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def _first_box(x) -> Box | None:
    """A prediction's box: the first well-formed one if `x` is text, `x` itself if a box."""
    if x is None:
        return None
    if isinstance(x, str):
        return next((p.box for p in parse_boxes(x) if p.box is not None), None)
    return _as_box(x, "predicted box")


def grounding_hit(pred, gold, threshold: float = 0.5) -> float:
    """1.0 if the prediction's box has IoU >= threshold with the gold box, else 0.0.
    `pred`: model text (its first well-formed box is used), a box, or None (a miss).
    `gold`: a box, or text holding one."""
    gold_box = _first_box(gold)
    if gold_box is None:
        raise InputError(f"gold {gold!r} holds no well-formed box")
    pred_box = _first_box(pred)
    return float(pred_box is not None and iou(pred_box, gold_box) >= threshold)


def box_iou(pred, gold) -> float:
    """IoU of the prediction's first well-formed box with the gold box; 0.0 when it has none (the mean
    over a test set is the "mean IoU" reported next to acc@0.5)."""
    gold_box = _first_box(gold)
    if gold_box is None:
        raise InputError(f"gold {gold!r} holds no well-formed box")
    pred_box = _first_box(pred)
    return iou(pred_box, gold_box) if pred_box is not None else 0.0


def grounding_accuracy(preds: list, golds: list, threshold: float = 0.5) -> float:
    """Fraction of predictions whose box reaches IoU >= threshold with the gold box
    (acc@0.5 by default). A prediction without a readable box is a miss, not an error."""
    if len(preds) != len(golds):
        raise InputError(f"{len(preds)} predictions but {len(golds)} gold boxes")
    if not preds:
        raise InputError("grounding_accuracy needs at least one prediction")
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"threshold must be in (0, 1], got {threshold}")
    return sum(grounding_hit(p, g, threshold) for p, g in zip(preds, golds)) / len(preds)
