"""docs/ARCHITECTURE.md names every module under ocellus/ (default run).

A module is named when the page holds its path (`ocellus/data/image.py`, `data/image.py`), its dotted name
(`ocellus.data.image`), or, inside the page's tree (the fenced block that starts with `ocellus/`), its path
relative to an enclosing entry: the tree nests by indentation, an entry ending in `/` opens a package, and every
`name.py` (or `sub/name.py`) on the lines of that entry, continuation lines included, is looked up under each
enclosing package from the innermost out. So a package may name its modules in a table (`contrastive/   clip.py
DualEncoder ...; siglip.py; moco.py ...`). A package's `__init__.py` is named with the package (`nn/`, or a
path / dotted name of the package).
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "ARCHITECTURE.md"
PATHLIKE = re.compile(r"[A-Za-z0-9_./-]+")


def modules_of(package: Path) -> set[str]:
    """Every module under the package dir, as its path relative to the package's parent ("ocellus/nn/rope.py")."""
    return {str(p.relative_to(package.parent)) for p in package.rglob("*.py")}


def _tree(text: str) -> list[str]:
    """The lines of the fenced block whose first line is `ocellus/` (the page's tree), [] without one."""
    blocks, block = [], None
    for line in text.splitlines():
        if line.startswith("```"):                     # a fence opens (```, ```python, ...) or closes a block
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is not None:
            block.append(line)
    return next((b for b in blocks if b and b[0] == "ocellus/"), [])


def _candidates(token: str, scopes: list[str]) -> set[str]:
    """token `sub/name.py` or `pkg/` under each enclosing package (innermost first) and under the root."""
    token = token.strip("./")
    if not token:
        return set()
    if token.endswith("/") or "." not in token.rpartition("/")[2]:        # a package: its __init__.py
        token = token.rstrip("/") + "/__init__.py"
    elif not token.endswith(".py"):
        return set()
    return {f"{scope}{token}" for scope in scopes} | {token, f"ocellus/{token}"}


def named_modules(text: str, modules: set[str]) -> set[str]:
    found: set[str] = set()
    # anywhere on the page: paths from the root (with or without `ocellus/`) and dotted names
    for token in PATHLIKE.findall(text):
        if token.startswith("ocellus.") and "/" not in token:
            dotted = token.rstrip(".").replace(".", "/")
            found |= {f"{dotted}.py", f"{dotted}/__init__.py"} & modules
        else:
            found |= _candidates(token if not token.endswith(".") else token[:-1], []) & modules
    # the tree: names relative to the entries they sit under
    stack: list[tuple[int, str]] = []                      # (indent, "ocellus/models/") of each open package entry
    for line in _tree(text):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        first = line.split()[0].rstrip(":")
        if re.fullmatch(r"[A-Za-z0-9_./-]+/", first) or (first.endswith(".py") and "(" not in first):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            if first.endswith("/"):
                parent = stack[-1][1] if stack else ""
                stack.append((indent, f"{parent}{first}" if first != "ocellus/" else "ocellus/"))
        scopes = [s for _, s in reversed(stack)]
        for token in PATHLIKE.findall(line):
            found |= _candidates(token.rstrip(":"), scopes) & modules
    return found


def missing(text: str, package: Path) -> list[str]:
    modules = modules_of(package)
    return sorted(modules - named_modules(text, modules))


def test_architecture_md_names_every_module():
    unnamed = missing(PAGE.read_text(), ROOT / "ocellus")
    assert not unnamed, ("modules docs/ARCHITECTURE.md does not name (add each to its package's entry of the tree, by "
                         "file name, or by path anywhere on the page):\n" + "\n".join(unnamed))


# ---- the checker, on a synthetic package --------------------------------------------------------------

def _package(tmp_path: Path, files: list[str]) -> Path:
    for rel in files:
        (tmp_path / "ocellus" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ocellus" / rel).write_text("")
    return tmp_path / "ocellus"


TREE = """# Title

Prose naming `ocellus/infer/generate.py` and ocellus.data.image.

```bash
python -m ocellus.x   # a fenced block of another kind first: the tree is still found
```

```
ocellus/
  __init__.py     the API
  nn/             primitives
    rope.py         RoPE
  models/
    text/decoder.py  the decoder; also serves eval.py
    contrastive/    clip.py DualEncoder; siglip.py;
                    moco.py on a continuation line
```
"""


def test_checker_reads_the_tree_by_scope_and_paths_anywhere(tmp_path):
    package = _package(tmp_path, ["__init__.py", "nn/__init__.py", "nn/rope.py", "models/text/decoder.py",
                                  "models/contrastive/clip.py", "models/contrastive/siglip.py",
                                  "models/contrastive/moco.py", "infer/generate.py", "data/image.py"])
    assert missing(TREE, package) == []


def test_checker_names_what_is_missing(tmp_path):
    package = _package(tmp_path, ["__init__.py", "nn/__init__.py", "nn/rope.py", "nn/mla.py", "models/text/decoder.py",
                                  "models/contrastive/clip.py", "models/contrastive/siglip.py",
                                  "models/contrastive/moco.py", "models/contrastive/momentum.py",
                                  "infer/generate.py", "data/image.py", "data/video.py", "eval/harness.py",
                                  "models/vision/rope.py"])
    # mla.py / momentum.py: nowhere; video.py: its package has no entry; harness.py: not named; a rope.py in
    # another package is not the nn/ one the tree names
    assert missing(TREE, package) == ["ocellus/data/video.py", "ocellus/eval/harness.py",
                                      "ocellus/models/contrastive/momentum.py", "ocellus/models/vision/rope.py",
                                      "ocellus/nn/mla.py"]
