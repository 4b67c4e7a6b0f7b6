#!/usr/bin/env python
"""Mutation check: inject realistic one-line bugs into Ocellus, one at a time, and count how many the tests catch.

Each mutation (a `[[mutation]]` table of scripts/mutations/<area>.toml) names a file, a snippet that must occur
there exactly once, its replacement, and the tests that must go red. The runner copies the tracked tree into a
scratch folder once, applies one mutation there, runs those tests with the copy first on PYTHONPATH (the working
tree is never edited, so a crash or Ctrl-C cannot leave a bug behind), restores the file and goes on.

    python scripts/mutation_check.py                  # every mutation; prints the kill rate
    python scripts/mutation_check.py -k ppo -k grpo   # only mutations whose name contains one of these
    python scripts/mutation_check.py --list           # the mutations, no tests run
    python scripts/mutation_check.py --baseline       # first check every named test set passes unmutated
    python scripts/mutation_check.py --sample 24 --seed 17 --baseline   # 24 drawn at random (a quick check of all)

Exit status 0 when the kill rate is at least --goal (default 0.95), else 1.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from mutations import Mutation, from_toml  # noqa: E402  (scripts/mutations/__init__.py: the record)


def load_mutations() -> list[Mutation]:
    """Every area's list: <area>.toml (the form), and a list `MUTATIONS` in an <area>.py still being written in
    the older form (loaded rather than silently dropped; move it to TOML)."""
    out: list[Mutation] = []
    folder = ROOT / "scripts" / "mutations"
    for path in sorted(folder.glob("*.toml")):
        out += from_toml(path)
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"mutations.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out += module.MUTATIONS
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SystemExit(f"duplicate mutation names: {dup}")
    return out


def copy_tree(dst: Path) -> None:
    """The tracked files (plus untracked, not ignored ones), as git sees the working tree now."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if not src.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


def run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "timed out"
    return p.returncode, (p.stdout + p.stderr)[-2000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", action="append", default=[], help="run mutations whose name contains this (repeatable)")
    ap.add_argument("--file", action="append", default=[], help="run mutations whose file path contains this (repeatable)")
    ap.add_argument("--sample", type=int, default=None, help="run this many of the selected mutations, drawn at random")
    ap.add_argument("--seed", type=int, default=0, help="the --sample draw's seed")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--baseline", action="store_true", help="check each test set passes on the unmutated tree first")
    ap.add_argument("--goal", type=float, default=0.95)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation's test run")
    ap.add_argument("-v", action="store_true", help="print the tail of pytest's output for survivors")
    args = ap.parse_args()

    muts = load_mutations()
    if args.k:
        muts = [m for m in muts if any(k in m.name for k in args.k)]
    if args.file:
        muts = [m for m in muts if any(f in m.file for f in args.file)]
    if args.sample is not None:
        muts = random.Random(args.seed).sample(muts, min(args.sample, len(muts)))
    if args.list:
        for m in muts:
            print(f"{m.name:50s} {m.file}  <- {' '.join(m.tests)}")
        print(f"{len(muts)} mutations")
        return 0

    with tempfile.TemporaryDirectory(prefix="ocellus-mut-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        # every mutation must apply to today's code: a snippet that moved is a broken check, not a survivor
        for m in muts:
            m.check_applies(tree)
        if args.baseline:
            for tests in sorted({tuple(m.tests) for m in muts}):
                rc, out = run_tests(tree, list(tests), args.timeout)
                if rc != 0:
                    print(out)
                    raise SystemExit(f"baseline red (rc {rc}) for {' '.join(tests)}")
            print("baseline: every test set passes unmutated")
        killed, survived = 0, []
        for i, m in enumerate(muts, 1):
            path = tree / m.file
            original = path.read_text()
            path.write_text(m.apply(original))
            t0 = time.time()
            try:
                rc, out = run_tests(tree, m.tests, args.timeout)
            finally:
                path.write_text(original)
            dead = rc not in (0, 5)   # 5: pytest collected no test, a broken check rather than a kill
            if rc == 5:
                raise SystemExit(f"{m.name}: its tests collected nothing ({' '.join(m.tests)})")
            killed += dead
            if not dead:
                survived.append(m)
            print(f"[{i:3d}/{len(muts)}] {'killed  ' if dead else 'SURVIVED'} {m.name}  ({time.time() - t0:.0f} s)",
                  flush=True)
            if not dead and args.v:
                print(out)
    rate = killed / max(len(muts), 1)
    print(f"\nkilled {killed} of {len(muts)} mutations: {100 * rate:.1f}% (goal {100 * args.goal:.0f}%)")
    for m in survived:
        print(f"  survived: {m.name} ({m.file})")
    return 0 if rate >= args.goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
