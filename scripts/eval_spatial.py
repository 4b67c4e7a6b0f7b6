"""Where does a VQA model stand on position? Scores the two position question types of the shapes world on
held-out scenes (the eval seed's, as `ocellus eval` draws them), each split by its form, with more questions
than shapes-vqa gives them (about 80 spatial questions in its 500):

  spatial   two objects' relation, "which side" form ("Is the red circle to the left or to the right of the
            blue square?": left / right / above / below) and yes / no form ("Is the red circle above the blue
            square?")
  position  one object's half ("Is the red circle in the left or the right half of the picture?"), the
            curriculum step towards spatial (data/shapes.py), not in shapes-vqa

    python scripts/eval_spatial.py MODEL_DIR [--n 400]     (n questions of each type)

--via-boxes asks a grounding model (Qwen-VL / Qwen2-VL trained on boxes) for each named object's box instead
("Give the bounding box of the red circle.") and answers each question from the boxes' centres: is the place
in the model at all, though it does not answer the relation in one step? (docs/VLM_COMPARISON.md, session 20)
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import replace

import ocellus
from ocellus.data.shapes import GROUNDING_PROMPTS, _RELATION_WORDS, sample_at
from ocellus.errors import ConfigError
from ocellus.eval.grounding import parse_boxes
from ocellus.eval.harness import predict
from ocellus.eval.vqa import vqa_exact_match
from ocellus.hub.checkpoint import trained_scene_size
from ocellus.train.posttrain import eval_config


def form(sample: dict) -> str:
    """The question's form: which-side (answer a direction), yes/no, or position (answer a half)."""
    if sample["type"] == "position":
        return "position"
    return "yes/no" if sample["answer"] in ("yes", "no") else "which side"


def questions(qa_type: str, n: int, size: int) -> list[dict]:
    """n questions of one type on the eval seed's scenes of 2-4 objects, passing over the scenes that cannot
    ask it (no object wholly in one half, for position)."""
    cfg = replace(eval_config(size, qa_type), min_objects=2)   # the held-out scenes post-training scores on
    if n < 1:
        raise ConfigError(f"--n must be a positive number of questions, got {n}")
    out, skipped = [], []
    for i in range(20 * n):
        try:
            out.append(sample_at(cfg, i, "qa"))
        except ConfigError as e:       # this scene cannot ask the type
            skipped.append(e)
            continue
        if len(out) == n:
            return out
    raise ConfigError(f"only {len(out)} of {n} {qa_type} questions in {20 * n} scenes; last refusal: {skipped[-1]}")


_SIDE = re.compile(r"Is the (?P<a>.+?) (?:(?P<x>to the left or to the right of)|(?P<y>above or below)) the (?P<b>.+?)\?")
_ASKED = re.compile(r"Is the (?P<a>.+?) (?P<rel>" + "|".join(map(re.escape, _RELATION_WORDS.values())) + r") the (?P<b>.+?)\?")
_HALF = re.compile(r"Is the (?P<a>.+?) in the (?:(?P<x>left or the right)|(?P<y>top or the bottom)) half")


def parse_question(text: str) -> tuple[list[str], str]:
    """A spatial / position question -> (the objects it names, what it asks: "side x|y", "asked <relation>" or
    "half x|y")."""
    if m := _SIDE.match(text):
        return [m["a"], m["b"]], "side " + ("x" if m["x"] else "y")
    if m := _HALF.match(text):
        return [m["a"]], "half " + ("x" if m["x"] else "y")
    if m := _ASKED.match(text):
        return [m["a"], m["b"]], "asked " + {v: k for k, v in _RELATION_WORDS.items()}[m["rel"]]
    raise ConfigError(f"not a spatial or position question: {text!r}")


def answer_from_boxes(what: str, centres: list[tuple[float, float] | None]) -> str | None:
    """The answer the boxes' centres (x, y in [0, 1000)) give, None when a box is missing."""
    if any(c is None for c in centres):
        return None
    kind, arg = what.split()
    if kind == "half":
        x, y = centres[0]
        return ("left" if x < 500 else "right") if arg == "x" else ("top" if y < 500 else "bottom")
    (ax, ay), (bx, by) = centres
    if kind == "side":
        return ("left" if ax < bx else "right") if arg == "x" else ("above" if ay < by else "below")
    holds = {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[arg]   # kind "asked"
    return "yes" if holds else "no"


def via_boxes(model, processor, samples: list[dict]) -> list[str]:
    """Each question answered from the model's boxes of the objects it names."""
    asks = [parse_question(s["messages"][0]["content"][-1]["text"]) for s in samples]
    grounding = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                "text": GROUNDING_PROMPTS[0].format(name=name)}]}], "images": s["images"]}
                 for s, (names, _) in zip(samples, asks) for name in names]
    replies = iter(predict(model, processor, grounding, [], max_new_tokens=24, batch_size=50, keep_special=True))
    out = []
    for names, what in asks:
        centres = []
        for _ in names:
            boxes = [b.box for b in parse_boxes(next(replies)) if b.box is not None]
            centres.append(((boxes[0][0] + boxes[0][2]) / 2, (boxes[0][1] + boxes[0][3]) / 2) if boxes else None)
        out.append(answer_from_boxes(what, centres) or "(no box)")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=400, help="questions of each type")
    ap.add_argument("--via-boxes", action="store_true", help="answer from the model's boxes of the named objects")
    args = ap.parse_args(argv)
    model, processor = ocellus.load(args.model).eval(), ocellus.load_processor(args.model)
    size = trained_scene_size(args.model) or model.vision_tower.config.image_size
    right, total, answers = Counter(), Counter(), Counter()
    for qa_type in ("spatial", "position"):
        samples = questions(qa_type, args.n, size)
        preds = via_boxes(model, processor, samples) if args.via_boxes else \
            predict(model, processor, samples, [], max_new_tokens=6, batch_size=50)
        for s, p in zip(samples, preds):
            f = form(s)
            total[f] += 1
            right[f] += vqa_exact_match(p, s["answer"])
            answers[(f, p.strip().lower())] += 1
    table = {f: right[f] / total[f] for f in total}
    spatial = sum(right[f] for f in ("which side", "yes/no")) / sum(total[f] for f in ("which side", "yes/no"))
    for f in total:
        common = ", ".join(f"{a} {c}" for (g, a), c in answers.most_common() if g == f)
        print(f"{f:<11} n={total[f]:<4} {100 * table[f]:5.1f}%   answers: {common}")
    print(f"spatial    n={args.n:<4} {100 * spatial:5.1f}%")
    return {"spatial": spatial, **table}


if __name__ == "__main__":
    main()
