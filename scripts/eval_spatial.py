"""Where does a VQA model stand on position? Scores the two position question types of the shapes world on
held-out scenes (the eval seed's, as `ocellus eval` draws them), each split by its form, with more questions
than shapes-vqa gives them (about 80 spatial questions in its 500):

  spatial   two objects' relation, "which side" form ("Is the red circle to the left or to the right of the
            blue square?": left / right / above / below) and yes / no form ("Is the red circle above the blue
            square?")
  position  one object's half ("Is the red circle in the left or the right half of the picture?"), the
            curriculum step towards spatial (data/shapes.py), not in shapes-vqa

    python scripts/eval_spatial.py MODEL_DIR [--n 400]     (n questions of each type)
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import replace

import ocellus
from ocellus.data.shapes import sample_at
from ocellus.errors import ConfigError
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=400, help="questions of each type")
    args = ap.parse_args(argv)
    model, processor = ocellus.load(args.model).eval(), ocellus.load_processor(args.model)
    size = trained_scene_size(args.model) or model.vision_tower.config.image_size
    right, total, answers = Counter(), Counter(), Counter()
    for qa_type in ("spatial", "position"):
        samples = questions(qa_type, args.n, size)
        for s, p in zip(samples, predict(model, processor, samples, [], max_new_tokens=6, batch_size=50)):
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
