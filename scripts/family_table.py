"""The per-family table of docs/VLM_COMPARISON.md from the runs of scripts/train_family.sh.

    python scripts/family_table.py [--img docs/img]

For each family whose final model has an eval_shapes_vqa.json next to it: held-out accuracy per question
type (n = 500), grounding acc@0.5 / mean IoU where evaluated, the chain's wall time (times.txt) and the
final loss; the run's loss curve is copied to IMG/family_<name>.png. Families not yet trained are listed
as such, never guessed. LLaVA is the embedded default model (scripts/make_default_model.sh).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ocellus.viz.curves import plot_curve

ROOT = Path(__file__).resolve().parent.parent
# family -> (the last recipe of its chain, the chain's recipes), as scripts/train_family.sh runs them
BLIP2 = ["blip2_tiny_shapes/stage1", "blip2_tiny_shapes/stage2", "blip2_tiny_shapes/vqa", "blip2_tiny_shapes/vqa2"]
CHAINS = {
    "llava": ["llava_tiny_shapes/align", "llava_tiny_shapes/sft"],
    "llava_next": ["llava_next_tiny_shapes/train"],
    "blip2": BLIP2,
    "minigpt4": BLIP2 + ["minigpt4_tiny_shapes/stage1", "minigpt4_tiny_shapes/stage2", "minigpt4_tiny_shapes/vqa"],
    "qwen_vl": ["qwen_vl_tiny_shapes/vit", "qwen_vl_tiny_shapes/pretrain", "qwen_vl_tiny_shapes/qa",
                "qwen_vl_tiny_shapes/qa2"],
    "internvl": ["internvl_tiny_shapes/train"],
    "qwen2_vl": ["qwen2_vl_tiny_shapes/vit", "qwen2_vl_tiny_shapes/train", "qwen2_vl_tiny_shapes/ground",
                 "qwen2_vl_tiny_shapes/ground2", "qwen2_vl_tiny_shapes/ground3",
                 "qwen2_vl_tiny_shapes/ground4"],
    "qwen2_5_vl": ["qwen2_5_vl_tiny_shapes/vit", "qwen2_5_vl_tiny_shapes/train"],
    "flamingo": ["flamingo_tiny_shapes/train"],
    "xgen_mm": ["xgen_mm_tiny_shapes/train"],
}
TYPES = ("colour", "shape", "existence", "count", "spatial", "all")


def out_dir(recipe: str) -> Path:
    import yaml
    return ROOT / yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())["train"]["out_dir"]


def seconds(chain: list[str]) -> float | None:
    """Wall time of the chain from each out_dir's times.txt (the last line naming each recipe)."""
    total = 0.0
    for recipe in chain:
        lines = [ln.split() for ln in (out_dir(recipe) / "times.txt").read_text().splitlines()
                 if ln.startswith(recipe)] if (out_dir(recipe) / "times.txt").exists() else []
        if not lines:
            return None
        total += float(lines[-1][1])
    return total


def chain_evals(chain: list[str]) -> list[dict]:
    """The held-out rows ({"step", "eval", "train_s"}) of every step of the chain that logged some, each step's
    steps and seconds counted on from where the previous such step ended (Qwen2-VL: QA, then grounding), so
    the curve runs over the whole VLM training; steps without eval rows (a ViT's pretraining) are not counted."""
    out, steps, secs = [], 0, 0.0
    for recipe in chain:
        path = out_dir(recipe) / "metrics.jsonl"
        history = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
        evals = [h for h in history if "eval" in h]
        if not evals:
            continue
        out += [{**h, "step": steps + h["step"], "train_s": secs + h["train_s"]} for h in evals]
        steps += max(h["step"] for h in history)
        secs += max(h["train_s"] for h in evals)
    return out


def final_vqa(out: Path) -> tuple[str, dict] | None:
    """(how it was scored, the held-out shapes-vqa table {type: [n, accuracy]}) of the run in `out`:
    eval_shapes_vqa.json (how ""), else a variant eval_shapes_vqa_<how>.json (scored another way, named in
    the row); None when the run has no final eval."""
    found = sorted(out.glob("eval_shapes_vqa*.json"))
    if not found:
        return None
    return found[0].stem.removeprefix("eval_shapes_vqa").lstrip("_"), json.loads(found[0].read_text())["table"]


def row(family: str, img: Path) -> str:
    chain = CHAINS[family]
    final = out_dir(chain[-1])
    vqa = final_vqa(final)
    if vqa is None:
        return f"| {family} | not trained in this run |" + " |" * (len(TYPES) + 2)
    how, table = vqa
    name = f"{family} ({how})" if how else family
    cells = [f"{100 * table[t][1]:.1f}" if t in table else "-" for t in TYPES]
    grounding = final / "eval_shapes_grounding.json"
    if grounding.exists():
        g = json.loads(grounding.read_text())     # table["all"] = (n, accuracy at IoU >= 0.5)
        cells.append(f"{100 * g['table']['all'][1]:.1f} / {g['mean_iou']:.3f}")
    else:
        cells.append("-")
    history = [json.loads(ln) for ln in (final / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    losses = [h for h in history if "loss" in h]
    cells.append(f"{losses[-1]['step']} / {losses[-1]['loss']:.3f}" if losses else "-")
    evals = chain_evals(chain)    # train.eval_every: held-out accuracy during the chain's VLM steps
    if len(evals) >= 2:
        for x, suffix in (("step", "step"), ("train_s", "seconds")):
            plot_curve([{"step": h[x], "accuracy": h["eval"]["all"]} for h in evals],
                       img / f"family_{family}_accuracy_{suffix}.png", key="accuracy", smooth=0.0,
                       title=f"{family} held-out (x: {'training seconds' if x == 'train_s' else 'step'})")
    s = seconds(chain)
    cells.append(f"{s:.0f}" if s is not None else "-")
    if (final / "curve.png").exists():
        shutil.copyfile(final / "curve.png", img / f"family_{family}.png")
    return f"| {name} | " + " | ".join(cells) + " |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    print("| family | " + " | ".join(TYPES) + " | grounding acc@0.5 / mean IoU | last step / loss | train s |")
    print("|---" * (len(TYPES) + 4) + "|")
    for family in CHAINS:
        print(row(family, args.img))


if __name__ == "__main__":
    main()
