"""What a vision-language model gets wrong on the binding questions of held-out shapes-vqa:
  "What colour is the <shape>?" and "What shape is the <colour> object?"
Each wrong answer is another object's attribute (the objects were seen, the named one not found: a binding
error) or one no object in the scene has (the attribute itself misread); split by how many objects the scene holds.

    python scripts/vqa_errors.py MODEL_DIR [MODEL_DIR ...] [--n 400]
"""
from __future__ import annotations

import argparse
from collections import Counter

import ocellus
from ocellus.eval import harness

KINDS = ("right", "another object's", "absent")


def error_kind(sample: dict, pred: str) -> str:
    """A colour / shape sample's prediction: right, another object's attribute, or one absent from the scene."""
    asked = sample["type"]
    if pred == sample["answer"]:
        return "right"
    return "another object's" if pred in {o[asked] for o in sample["objects"]} else "absent"


def tally(samples: list[dict], preds: list[str]) -> Counter:
    """-> Counter over (question type, objects in the scene, error_kind) of the colour / shape samples."""
    return Counter((s["type"], len(s["objects"]), error_kind(s, p)) for s, p in zip(samples, preds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=400, help="held-out samples drawn (about a quarter ask colour or shape)")
    a = ap.parse_args()
    for model_dir in a.models:
        model, proc = ocellus.load(model_dir), ocellus.load_processor(model_dir)
        samples = [s for s in harness.task_samples("shapes-vqa", a.n, harness.eval_image_size(model, proc))
                   if s["type"] in ("colour", "shape")]
        counts = tally(samples, harness.predict(model, proc, samples, [], 6))
        print(f"{model_dir}  ({len(samples)} colour / shape questions)")
        print(f"{'type':<7} {'objects':>7} " + " ".join(f"{k:>16}" for k in KINDS))
        for asked in ("colour", "shape"):
            for n_obj in sorted({k[1] for k in counts if k[0] == asked}):
                print(f"{asked:<7} {n_obj:>7} " + " ".join(f"{counts[asked, n_obj, k]:>16}" for k in KINDS))


if __name__ == "__main__":
    main()
