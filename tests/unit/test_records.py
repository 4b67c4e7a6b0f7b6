"""The project's two records stay true as the code moves: docs/FEATURES.md (each concept's proof is a default-run
test that exists) and the mutation record scripts/mutations/ (each bug's snippet is still in its file, once, and
the tests named to catch it exist and run by default). A renamed test, a snippet edited away by a refactor, or a
proof that only runs with -m slow turns these red instead of leaving a record that no longer checks anything."""
from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from mutation_check import load_mutations  # noqa: E402

CITE = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")
# Rows proved by something no CPU test can run: the GPU round needs a CUDA machine (docs/BENCHMARKS.md, "GPU").
NO_TEST = ("GPU round",)


@cache
def marks_of(path: str) -> tuple[bool, dict[str, bool]]:
    """-> (the module is marked slow, {test function or class name: marked slow}) of one test file."""
    tree = ast.parse((ROOT / path).read_text())
    slow = lambda node: "slow" in ast.unparse(node)              # noqa: E731  pytest.mark.slow in any spelling
    module = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                 and slow(n.value) for n in tree.body)
    names = {n.name: any(slow(d) for d in n.decorator_list) for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name.startswith(("test", "Test"))}
    return module, names


def default_run(path: str, name: str | None) -> bool:
    """Whether the cited test (a file, or one test in it) runs in the default run (not only under -m slow)."""
    module, names = marks_of(path)
    if module:
        return False
    return not names[name] if name else any(not s for s in names.values())


def feature_rows() -> list[str]:
    lines = (ROOT / "docs" / "FEATURES.md").read_text().splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith(("| concept", "|---"))]


def test_every_cited_test_exists():
    missing = []
    for row in feature_rows():
        for path, name in CITE.findall(row):
            if not (ROOT / path).is_file():
                missing.append(path)
            elif name and name not in marks_of(path)[1]:
                missing.append(f"{path}::{name}")
    assert not missing, f"docs/FEATURES.md cites tests that do not exist: {sorted(set(missing))}"


def test_every_feature_is_proved_by_a_default_run_test():
    unproved = [row.split(" | ")[0][2:] for row in feature_rows() if not row.startswith(tuple(f"| {n}" for n in NO_TEST))
                and not any((ROOT / p).is_file() and (not n or n in marks_of(p)[1]) and default_run(p, n or None)
                            for p, n in CITE.findall(row))]
    assert not unproved, f"docs/FEATURES.md rows whose only proofs are slow or missing: {unproved}"


MUTATIONS = load_mutations()


def test_the_mutation_record_is_large():       # (names are checked unique by load_mutations itself)
    assert len(MUTATIONS) >= 40


@pytest.mark.parametrize("area", sorted({m.file for m in MUTATIONS}))
def test_each_snippet_is_in_its_file_once(area):
    wrong = []
    for m in MUTATIONS:
        if m.file == area:
            try:
                m.check_applies(ROOT)           # the runner's own check: once in the file, and a real change
            except SystemExit as e:
                wrong.append(str(e))
    assert not wrong, "\n".join(wrong)


def test_each_mutation_names_default_run_tests_that_exist():
    bad = []
    for m in MUTATIONS:
        for test in m.tests:
            path, _, node = test.partition("::")
            name = node.split("::")[0].split("[")[0] or None
            if not (ROOT / path).is_file() or (name and name not in marks_of(path)[1]):
                bad.append((m.name, test, "missing"))
            elif not default_run(path, name):
                bad.append((m.name, test, "slow only"))
    assert not bad, f"mutations whose tests are missing or never run by default: {bad}"
