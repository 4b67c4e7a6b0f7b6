"""The bridges compared at convergence (issue 18 item 5): docs/VLM_COMPARISON.md, "Session 14".

    OMP_NUM_THREADS=1 python scripts/compare_bridges.py [--img docs/img] [--json docs/vlm_bridges_converged.json]
                                                        [--remeasure] [--seconds-per-family 10]

For every family of scripts/family_table.py whose chain has been trained (scripts/train_family.sh):
  - its legs: the chain's recipes as their runs' recipe.json ran them, vision-only pretraining (task
    vit_classify, like the shared ViT every family starts from) left out; a leg borrowed from another family's
    chain (MiniGPT-4's BLIP-2 Q-Former) counts in samples and seconds but draws no points;
  - held-out accuracy (colour, shape, all) at every point the runs recorded: evals during training
    (metrics.jsonl, n = 200: family_table.chain_evals) and each leg's final eval (n = 500: family_table.final_vqa),
    against training samples (in steps of 32) and against load-free seconds = steps x the leg's s/step;
  - s/step measured here: every leg's Trainer built from its recipe, then real optimizer steps, all legs in this
    one process, round-robin (one step of each leg per round, so a change of load falls on all families alike),
    the median after warm-up; kept in the JSON and reused unless --remeasure;
  - image tokens per sample, counted by each family's training processor on a held-out scene, and trainable /
    total parameters per part of the decoder-training leg (the first leg that trains the decoder);
  - a family whose recorded final eval was rendered at another scene size than it trained on (`ocellus eval`
    uses the tower's input size: InternVL's 48 px tiles, not its 96 px scenes) scored again at its own (rescored);
  - the table (markdown, stdout) and the plots IMG/bridges_converged_step.png and _seconds.png.
A family whose runs are not on this machine (trained in an earlier session) keeps the row the JSON holds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_table import CHAINS, ROOT, chain_evals, final_vqa, out_dir  # noqa: E402  (a script beside this one)

from ocellus.compare import ROUTES, decoder_image_tokens  # noqa: E402
from ocellus.data.processor import load_processor  # noqa: E402
from ocellus.errors import ConfigError, InputError  # noqa: E402
from ocellus.eval.harness import eval_image_size, predict, score, task_samples  # noqa: E402
from ocellus.hub.checkpoint import load_model  # noqa: E402
from ocellus.train.run import build_trainer  # noqa: E402
from ocellus.train.tasks import task_module, validate  # noqa: E402
from ocellus.train.vlm_export import training_processor  # noqa: E402
from ocellus.viz.curves import Series, plot_panels  # noqa: E402

UNIT = 32                  # samples per "step" on the x axis: every decoder-training leg ran 4000 x 32
KINDS = ("colour", "shape", "all")
FLAT_POINTS = 0.03         # "flattened": the last two evals of "all" within 3 points (n = 200: one answer = 0.5)
BAR = 0.90                 # issue 18: colour and shape >= 90% held-out


@dataclass
class Leg:
    recipe: str                 # e.g. "blip2_tiny_shapes/vqa"
    steps: int
    samples_per_step: int       # batch x data.interleave (Flamingo: 8 sequences of 4 samples)
    trains_llm: bool
    own: bool                   # the family's own recipe (False: borrowed from another family's chain)
    s_per_step: float | None = None


@dataclass
class Point:
    leg: int                    # index into the family's legs
    step: int                   # within the leg
    acc: dict                   # {"colour": 0.97, ...}
    n: int                      # 200: during training; 500: the leg's final eval


# ---- pure parts (tests/unit/test_compare_bridges.py) --------------------------------------------
def position(legs: list[Leg], leg: int, step: int) -> tuple[float, float | None]:
    """(samples in steps of UNIT, load-free seconds) after `step` steps of legs[leg], every earlier leg run
    whole; seconds None when a leg on the way has no measured s/step."""
    if not 0 <= leg < len(legs) or not 0 <= step <= legs[leg].steps:
        raise InputError(f"no step {step} in leg {leg} of {len(legs)} legs")
    done = [(lg, lg.steps) for lg in legs[:leg]] + [(legs[leg], step)]
    samples = sum(lg.samples_per_step * k for lg, k in done) / UNIT
    if any(lg.s_per_step is None for lg, _ in done):
        return samples, None
    return samples, sum(lg.s_per_step * k for lg, k in done)


def comparable_last_two(points: list[Point]) -> list[Point]:
    """The last two evals scored on the same held-out scenes (the same n: 200 during training, 500 at a leg's end;
    a run's n = 200 and n = 500 numbers differ by more than the curve moves), from the set whose last eval comes
    latest (the larger n on a tie); fewer than two when no set has two."""
    sets = {}
    for p in sorted(points, key=lambda p: (p.leg, p.step)):
        sets.setdefault(p.n, []).append(p)
    full = [ps for ps in sets.values() if len(ps) >= 2]
    if not full:
        return sorted(points, key=lambda p: (p.leg, p.step))[-1:]
    return max(full, key=lambda ps: (ps[-1].leg, ps[-1].step, ps[-1].n))[-2:]


def flattened(values: list[float], tol: float = FLAT_POINTS) -> bool | None:
    """Whether the curve had flattened: its last two values within tol; None with fewer than two."""
    if len(values) < 2:
        return None
    return abs(values[-1] - values[-2]) <= tol


def value_at(curve: list[tuple[float, object]], x: float):
    """The last measured value at or before x on a curve [(x, value), ...] in rising x (no interpolation: a run is
    only known where it was evaluated); None when the first point lies beyond x."""
    known = [y for cx, y in curve if cx <= x + 1e-9]
    return known[-1] if known else None


def late_loss_change(losses: list[tuple[int, float]]) -> float | None:
    """Relative change of the mean training loss from the third quarter of a leg's steps to the last
    (-0.05: it still fell 5%); None with too few logged steps."""
    if not losses:
        return None
    end = max(s for s, _ in losses)
    third = [v for s, v in losses if end / 2 < s <= 3 * end / 4]
    last = [v for s, v in losses if s > 3 * end / 4]
    if len(third) < 2 or len(last) < 2:
        return None
    return statistics.fmean(last) / statistics.fmean(third) - 1


def first_reaching(curve: list[dict], bar: float = BAR) -> dict | None:
    """The first eval on a chain's curve ({"colour", "shape", ...} in chain order) with colour and shape both
    >= bar; None when none reaches it."""
    return next((c for c in curve if c["colour"] >= bar and c["shape"] >= bar), None)


def median_step(seconds: list[float], warmup: int) -> float:
    """The median step time after `warmup` steps (the first steps build caches and the allocator's pools)."""
    timed = seconds[warmup:]
    if not timed:
        raise InputError(f"{len(seconds)} step times with {warmup} warm-up steps leave none to time")
    return statistics.median(timed)


# ---- the runs -----------------------------------------------------------------------------------
def ran_recipe(recipe: str) -> dict:
    """The recipe as its run ran it (out_dir/recipe.json); a model.from / init_from that no longer exists on
    disk (a run made under another out_dir and moved) is taken from the shipped recipe, which names the same
    architecture, so that the leg can be built again and timed."""
    path = out_dir(recipe) / "recipe.json"
    if not path.exists():
        raise ConfigError(f"{recipe}: no run ({path} is missing): scripts/train_family.sh trains it")
    ran = json.loads(path.read_text())
    shipped = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    for key in ("from", "init_from", "vision_from", "llm_from"):
        where = (ran.get("model") or {}).get(key)
        if where and not (ROOT / where).exists():
            ran["model"][key] = shipped["model"][key]
    return ran


def legs_of(family: str) -> list[Leg]:
    home = CHAINS[family][-1].split("/")[0]
    legs = []
    for recipe in CHAINS[family]:
        ran = ran_recipe(recipe)
        if ran["task"] == "vit_classify":
            continue
        llm = (ran["train"].get("stage") or {}).get("llm", "full")
        trains_llm = (llm.get("mode", "full") if isinstance(llm, dict) else llm) != "frozen" and ran["task"] == "vlm"
        legs.append(Leg(recipe, int(ran["train"]["max_steps"]),
                        int(ran["train"]["batch_size"]) * int(ran["data"].get("interleave", 1)),
                        trains_llm, recipe.split("/")[0] == home))
    return legs


def points_of(legs: list[Leg], rescore: dict | None = None) -> list[Point]:
    """Every held-out eval of the family's own legs; `rescore` (rescored()) replaces the last leg's final."""
    out = []
    for i, leg in enumerate(legs):
        if not leg.own:
            continue
        n = int((ran_recipe(leg.recipe).get("eval") or {}).get("n", 200))   # run.py's default for eval_every
        out += [Point(i, h["step"], h["eval"], n) for h in chain_evals([leg.recipe])]
        final = final_vqa(out_dir(leg.recipe))
        if rescore is not None and i == len(legs) - 1:
            final = ("rescored", rescore["table"])
        if final is not None:
            out.append(Point(i, leg.steps, {k: v[1] for k, v in final[1].items()}, final[1]["all"][0]))
    return sorted(out, key=lambda p: (p.leg, p.step, p.n))


def loss_rows(recipe: str) -> list[tuple[int, float]]:
    path = out_dir(recipe) / "metrics.jsonl"
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


# ---- the measurement ----------------------------------------------------------------------------
def build_leg(recipe: str, scratch: Path):
    """The leg's Trainer as run_trainer builds it, out_dir under scratch, no evaluation during training."""
    ran = ran_recipe(recipe)
    ran["train"] = {**ran["train"], "out_dir": str(scratch / recipe.replace("/", "_")), "eval_every": 0,
                    "progress": False}
    validate(ran, where=recipe)
    trainer, tok, model = build_trainer(ran, task_module(ran["task"]))
    return trainer, tok, model, ran


def measure(families: dict[str, list[Leg]], scratch: Path, seconds_per_family: float, warmup: int = 2) -> dict:
    """Every distinct leg's s/step and, for each family's decoder-training leg, its parameters per part and
    image tokens per held-out scene: all built in this process, steps timed round-robin."""
    torch.set_num_threads(1)
    recipes = list(dict.fromkeys(leg.recipe for legs in families.values() for leg in legs))
    built = {r: build_leg(r, scratch) for r in recipes}
    times: dict[str, list[float]] = {r: [] for r in recipes}
    tokens: dict[str, list[int]] = {r: [] for r in recipes}     # per step: what makes one leg's step dearer

    def one_round():
        for r in recipes:
            start = time.perf_counter()
            _, n = built[r][0].train_step()
            times[r].append(time.perf_counter() - start)
            tokens[r].append(n)

    for _ in range(warmup):
        one_round()
    round_s = sum(times[r][-1] for r in recipes)
    rounds = max(3, min(12, int(seconds_per_family * len(families) / max(round_s, 1e-6))))
    load = os.getloadavg()
    for _ in range(rounds):
        one_round()
    result = {"s_per_step": {r: median_step(times[r], warmup) for r in recipes},
              "tokens_per_step": {r: statistics.median(tokens[r]) for r in recipes},
              "timed_steps": rounds, "warmup_steps": warmup, "loadavg_before_after": [load[0], os.getloadavg()[0]],
              "omp_threads": torch.get_num_threads(), "families": {}}
    for family, legs in families.items():
        main = next((leg for leg in legs if leg.own and leg.trains_llm), [leg for leg in legs if leg.own][-1])
        trainer, tok, model, ran = built[main.recipe]
        size = int(ran["data"]["image_size"])
        scene = task_samples("shapes-vqa", 1, size)[0]["images"][0]
        tokens, slots = decoder_image_tokens(model, training_processor(model, tok, size), scene)
        result["families"][family] = {"image_tokens": tokens, "visual_slots": slots, "image_size": size,
                                      "params": {p: list(c) for p, c in trainer.report.counts.items()},
                                      "rescored": rescored(legs, size)}
    return result


def rescored(legs: list[Leg], size: int) -> dict | None:
    """`ocellus eval` renders its scenes at eval_image_size (the tower's fixed input), which for a tiling family
    trained on larger scenes (InternVL: 96 px scenes cut into 48 px tiles) is not what it was trained on: the
    final leg's export is then scored again here on scenes of the training size (n = 500, the eval seed, as the
    evaluation during training does) -> {"px", "recorded_px", "table"}; None when the sizes agree."""
    export = out_dir(legs[-1].recipe) / "model"
    model, processor = load_model(export).eval(), load_processor(export)
    recorded = eval_image_size(model, processor)
    if recorded == size:
        return None
    samples = task_samples("shapes-vqa", 500, size)
    table = score("shapes-vqa", samples, predict(model, processor, samples, [], 6))["table"]
    return {"px": size, "recorded_px": recorded, "table": {k: list(v) for k, v in table.items()}}


# ---- the table and plots ------------------------------------------------------------------------
def continued_step(recipe: str, legs: list[Leg], s_per_step: dict) -> float | None:
    """The s/step of a leg the JSON has no time for when it continues another leg of its chain with the same step
    (its model.from is that leg's export; same task, batch, data and stage, e.g. blip2 vqa2 after vqa): that leg's."""
    ran = ran_recipe(recipe)
    same = lambda r: {k: (r.get(k) if k != "train" else {x: r["train"].get(x) for x in ("batch_size", "stage")})
                      for k in ("task", "data", "train")}
    for leg in legs:
        if leg.recipe in s_per_step and str(out_dir(leg.recipe) / "model") == str((ROOT / ran["model"].get("from", "")))\
                and same(ran_recipe(leg.recipe)) == same(ran):
            return s_per_step[leg.recipe]
    return None


def summarise(family: str, legs: list[Leg], measured: dict) -> dict:
    for leg in legs:
        leg.s_per_step = measured["s_per_step"].get(leg.recipe) or continued_step(leg.recipe, legs,
                                                                                measured["s_per_step"])
        if leg.s_per_step is None:
            raise ConfigError(f"{leg.recipe}: no step time in the JSON; run with --remeasure")
    points = points_of(legs, measured["families"][family]["rescored"])
    if not points:
        raise ConfigError(f"{family}: no held-out eval in its runs")
    # the decoder-training leg; a family whose decoder stays frozen (Flamingo's shipped recipe): its last own leg
    main = next((i for i, leg in enumerate(legs) if leg.own and leg.trains_llm),
                max(i for i, leg in enumerate(legs) if leg.own))
    main_end = [p for p in points if (p.leg, p.step, p.n) == (main, legs[main].steps, 500)]
    finals = [p for p in points if p.n == 500]
    last_two = comparable_last_two(points)
    rows = [{"steps": x, "seconds": sec, "n": p.n, **{k: p.acc[k] for k in KINDS}}
            for x, sec, p in ((*position(legs, p.leg, p.step), p) for p in points)]
    return {
        "family": family, "route": ROUTES[family], **measured["families"][family],
        "legs": [leg.__dict__ for leg in legs], "main_leg": legs[main].recipe,
        "s_per_step_main": legs[main].s_per_step,
        "tokens_per_step_main": measured["tokens_per_step"][legs[main].recipe],
        "main_end": {"steps": position(legs, main, legs[main].steps)[0],
                     "seconds": position(legs, main, legs[main].steps)[1],
                     "acc": main_end[0].acc if main_end else None},
        "final": {"steps": position(legs, finals[-1].leg, finals[-1].step)[0],
                  "seconds": position(legs, finals[-1].leg, finals[-1].step)[1], "acc": finals[-1].acc},
        "curve": rows,
        "last_two_all": [p.acc["all"] for p in last_two], "last_two_n": last_two[-1].n,
        "flattened": flattened([p.acc["all"] for p in last_two]),
        "late_loss_change": late_loss_change(loss_rows(legs[-1].recipe)),
        "first_at_bar": first_reaching(rows),
    }


def equal_seconds(rows: list[dict]) -> float:
    """The common seconds budget: the shortest family's chain to the end of its decoder-training leg."""
    return min(r["main_end"]["seconds"] for r in rows)


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown(rows: list[dict], measured: dict) -> str:
    fastest = min(r["s_per_step_main"] for r in rows)
    budget = equal_seconds(rows)
    out = [f"Step times: OMP_NUM_THREADS=1, {measured['timed_steps']} timed steps per leg after "
           f"{measured['warmup_steps']} warm-up, round-robin; load average {measured['loadavg_before_after'][0]:.1f}"
           f" -> {measured['loadavg_before_after'][1]:.1f}. Seconds = steps x s/step of each leg.", "",
           "| family | route | image tokens / sample (slots) | trainable / total params (k): vision, connector, llm "
           "| tokens / step (decoder leg) | s/step | x fastest | decoder leg ends at: step / s | final: step / s |",
           "|---|---|---|---|---|---|---|---|---|"]
    order = ("vision", "connector", "llm")
    for r in rows:
        params = ", ".join(f"{t / 1e3:.0f} / {n / 1e3:.0f}" for _, (t, n) in
                           sorted(r["params"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 3))
        slots = f" ({r['visual_slots']})" if r["visual_slots"] != r["image_tokens"] else ""
        out.append(f"| {r['family']} | {r['route']} | {r['image_tokens']}{slots} | {params} | "
                   f"{r['tokens_per_step_main']:.0f} | {r['s_per_step_main']:.3f} | "
                   f"{r['s_per_step_main'] / fastest:.2f} | "
                   f"{r['main_end']['steps']:.0f} / {r['main_end']['seconds']:.0f} | "
                   f"{r['final']['steps']:.0f} / {r['final']['seconds']:.0f} |")
    out += ["", "| family | final (n = 500): colour / shape / all | decoder leg's end (128k samples): colour / shape / "
            f"all | first eval with colour & shape >= 90: step / s (n) | all at {budget:.0f} s (n, at s) "
            "| last two evals of 'all' (n) | flattened | loss, last quarter vs third | colour & shape >= 90 |",
            "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in rows:
        f, m, bar = r["final"]["acc"], r["main_end"]["acc"], r["first_at_bar"]
        then = value_at([(c["seconds"], c) for c in r["curve"]], budget)
        reached = "never" if bar is None else f"{bar['steps']:.0f} / {bar['seconds']:.0f} ({bar['n']})"
        at_budget = "-" if then is None else f"{pct(then['all'])} ({then['n']}, {then['seconds']:.0f})"
        flat = {None: "unknown (one eval)", True: "yes", False: "no"}[r["flattened"]]
        change = "-" if r["late_loss_change"] is None else f"{100 * r['late_loss_change']:+.0f}%"
        mark = " *" if r["rescored"] else ""
        if r["rescored"]:
            recorded = final_vqa(out_dir(r["legs"][-1]["recipe"]))      # None: a row kept from the JSON
            there = f" (all {pct(recorded[1]['all'][1])} there)" if recorded else ""
            notes.append(f"* {r['family']}: final eval scored again on {r['rescored']['px']} px scenes, the size it "
                         f"was trained on; `ocellus eval` rendered {r['rescored']['recorded_px']} px{there}.")
        out.append(f"| {r['family']}{mark} | {' / '.join(pct(f[k]) for k in KINDS)} | "
                   f"{' / '.join(pct(m[k]) for k in KINDS) if m else '-'} | {reached} | {at_budget} | "
                   f"{' -> '.join(pct(v) for v in r['last_two_all'])} ({r['last_two_n']}) | {flat} | {change} | "
                   f"{'yes' if f['colour'] >= BAR and f['shape'] >= BAR else 'no'} |")
    return "\n".join(out + ([""] + notes if notes else []))


def plots(rows: list[dict], img: Path) -> list[Path]:
    lowest = min(c[k] for r in rows for c in r["curve"] for k in KINDS)
    y_range = (min(0.5, int(10 * lowest) / 10), 1.0)     # the lowest eval in view, on a tenth
    made = []
    for axis, label, name in (("steps", f"step (of {UNIT} samples)", "step"),
                              ("seconds", "seconds = steps x s/step measured in one run (OMP 1)", "seconds")):
        panels = {}
        for kind in KINDS:
            panels[f"held-out {kind}"] = [
                Series(r["family"], line=tuple((c[axis], c[kind]) for c in r["curve"] if c["n"] < 500),
                       dots=tuple((c[axis], c[kind]) for c in r["curve"] if c["n"] >= 500)) for r in rows]
        made.append(plot_panels(panels, img / f"bridges_converged_{name}.png", label, y_range=y_range,
                                panel_size=(520, 400),
                                title="held-out accuracy: lines = evals during training (n = 200), dots = each leg's "
                                      "final eval (n = 500, the same scenes for every family)"))
    return made


def merge_rows(rows: list[dict], old: dict | None) -> list[dict]:
    """This run's rows, plus the JSON's row of every family trained in an earlier session whose runs are not on this
    machine (kept as it was), in CHAINS' order."""
    have = {r["family"] for r in rows}
    kept = [r for r in (old or {}).get("rows", []) if r["family"] not in have]
    for r in kept:
        print(f"{r['family']}: its runs are not here; its row is the one the JSON holds", file=sys.stderr)
    order = list(CHAINS)
    return sorted(rows + kept, key=lambda r: order.index(r["family"]) if r["family"] in order else len(order))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "vlm_bridges_converged.json")
    ap.add_argument("--remeasure", action="store_true", help="time the steps again though the JSON holds them")
    ap.add_argument("--seconds-per-family", type=float, default=10.0, help="timing budget per family (rounds)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/compare_bridges"))
    args = ap.parse_args(argv)
    families = {}
    for family in CHAINS:
        if final_vqa(out_dir(CHAINS[family][-1])) is None:
            print(f"{family}: not trained (no held-out eval in {out_dir(CHAINS[family][-1])}); left out",
                  file=sys.stderr)
            continue
        families[family] = legs_of(family)
    old = json.loads(args.json.read_text()) if args.json.exists() else None
    measured = old["measured"] if old and not args.remeasure else measure(families, args.scratch,
                                                                          args.seconds_per_family)
    rows = merge_rows([summarise(f, legs, measured) for f, legs in families.items()], old)
    args.json.write_text(json.dumps({"measured": measured, "rows": rows}, indent=1) + "\n")
    args.img.mkdir(parents=True, exist_ok=True)
    plots(rows, args.img)
    print(markdown(rows, measured))


if __name__ == "__main__":
    main()
