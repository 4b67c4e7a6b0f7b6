"""pyproject's dependencies and extras match what the code imports (parsed, nothing imported):
- every third-party import under ocellus/ is a core dependency or belongs to an extra (or to the one package the
  README tells to install by name);
- each `ocellus CMD` reaches (through its cli.py function and every ocellus module that imports, module level or
  lazily) only core dependencies and the extras its README row names (`hub` everywhere: any --model ORG/NAME),
  counting the imports that would fail the command outright (not those behind a guard below, which fail only the
  path that needs them, with the install line);
- an import of a package outside the core deps fails with an error naming `pip install 'ocellus[EXTRA]'`: its own
  try / except ImportError, a call before it (in the same function) of a function holding such a guard
  (hf_dataset.require_datasets), or a guard a named caller puts around the only way in;
- the README names every extra."""
from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "ocellus"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
README = (REPO / "README.md").read_text()
# import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "llama_cpp": "llama-cpp-python"}
# a module whose extra package is imported without its own guard -> the module whose guard is the only way in
GUARDED_BY = {"ocellus/bench.py": "ocellus/cli.py", "ocellus/bench_vlm.py": "ocellus/cli.py",
              "ocellus/bench_serve.py": "ocellus/cli.py", "ocellus/hub/gguf_export.py": "ocellus/bench.py"}


def norm(name: str) -> str:
    return re.split(r"[<>=!~;\[ ]", name, maxsplit=1)[0].strip().lower().replace("_", "-")


CORE = {norm(r) for r in PROJECT["dependencies"]}
EXTRAS = {name: {norm(r) for r in reqs} for name, reqs in PROJECT["optional-dependencies"].items() if name != "test"}


def dist(top: str) -> str:
    return norm(DISTRIBUTION.get(top, top))


def install_line(package: str) -> str:
    extra = next((e for e, pkgs in EXTRAS.items() if package in pkgs), None)
    return f"pip install 'ocellus[{extra}]'" if extra else f"pip install {package}"


@dataclass
class Use:
    """One third-party import: where, and what stands around it."""
    file: str
    line: int
    package: str              # the distribution
    function: ast.AST | None  # the innermost enclosing function
    guards: str               # the source of the `except ImportError` handlers (that raise) of the trys around it
    calls_before: set[str]    # the functions its function calls on earlier lines


def _handler_text(tree: ast.Module, handler: ast.ExceptHandler) -> str:
    """An ImportError handler that raises: its source plus the module-level strings it names (INSTALL = ...)."""
    caught = ast.unparse(handler.type) if handler.type is not None else ""
    if "ImportError" not in caught and "ModuleNotFoundError" not in caught or \
            not any(isinstance(n, ast.Raise) for n in ast.walk(handler)):
        return ""
    constants = {t.id: ast.unparse(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name)}
    names = {n.id for n in ast.walk(handler) if isinstance(n, ast.Name)}
    return ast.unparse(handler) + " ".join(constants[n] for n in names if n in constants)


def _scan(tree: ast.Module, file: str) -> tuple[list[Use], set[str], str]:
    """(the third-party imports of a file, the ocellus modules it imports, the guards around those), in one walk."""
    uses, modules, module_guards = [], set(), []

    def visit(node, function, guards):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function, guards = node, ""
        if isinstance(node, ast.Try):
            text = " ".join(_handler_text(tree, h) for h in node.handlers)
            for child in node.body:
                visit(child, function, guards + text)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, function, guards)
            return
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        for name in names:
            top = name.split(".")[0]
            if top == "ocellus":
                subs = [f"{name}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
                modules.update(m.replace(".", "/") for m in [*subs, name])
                module_guards.append(guards)
            elif top not in sys.stdlib_module_names:
                calls = {c.func.id if isinstance(c.func, ast.Name) else getattr(c.func, "attr", "")
                         for c in ast.walk(function) if isinstance(c, ast.Call) and c.lineno < node.lineno} \
                    if function is not None else set()
                uses.append(Use(file, node.lineno, dist(top), function, guards, calls))
        for child in ast.iter_child_nodes(node):
            visit(child, function, guards)

    visit(tree, None, "")
    return uses, modules, " ".join(module_guards)


@functools.cache
def scanned() -> dict[str, tuple[ast.Module, list[Use], set[str], str]]:
    """file -> (tree, its third-party imports, the ocellus files it imports, the guards around those imports)."""
    trees = {p.relative_to(REPO).as_posix(): ast.parse(p.read_text()) for p in sorted(ROOT.rglob("*.py"))}
    out = {}
    for f, tree in trees.items():
        uses, modules, module_guards = _scan(tree, f)
        files = {c for m in modules for c in (f"{m}.py", f"{m}/__init__.py") if c in trees}
        out[f] = (tree, uses, files, module_guards)
    return out


@functools.cache
def guard_functions() -> dict[str, set[str]]:
    """install line -> the functions under ocellus/ whose own try / except guards that import."""
    out: dict[str, set[str]] = {}
    for _, uses, _, _ in scanned().values():
        for u in uses:
            if u.function is not None and install_line(u.package) in u.guards:
                out.setdefault(install_line(u.package), set()).add(u.function.name)
    return out


def guarded(u: Use) -> bool:
    install = install_line(u.package)
    return install in u.guards or bool(u.calls_before & guard_functions().get(install, set()))


def readme_allowed() -> dict[str, set[str]]:
    """`ocellus CMD` -> the extras (and by-name packages) its README table rows name in the last column."""
    rows: dict[str, set[str]] = {}
    for line in README.splitlines():
        m = re.match(r"\| `ocellus ([a-z-]+)[^|]*\|.*\|([^|]*)\|\s*$", line)
        if m:
            named = {w for w in re.findall(r"`([a-z-]+)`", m.group(2)) if w in EXTRAS}
            named |= {norm(w) for w in re.findall(r"pip install ([\w-]+)", m.group(2))}
            rows.setdefault(m.group(1), set()).update(named)
    return rows


def command_reach() -> dict[str, set[str]]:
    """`ocellus CMD` -> the third-party packages needed outright by its cli.py function (and the cli helpers it
    calls) and by every ocellus module it reaches: imports without a guard of their own."""
    files = scanned()
    cli_tree, cli_uses, _, _ = files["ocellus/cli.py"]
    cli = {n.name: n for n in cli_tree.body if isinstance(n, ast.FunctionDef)}
    reach = {}
    for name in [n for n in cli if n.startswith("cmd_")]:
        funcs, todo = set(), [name]
        while todo:   # the cli helpers it calls
            f = todo.pop()
            if f not in funcs:
                funcs.add(f)
                todo += [c.func.id for c in ast.walk(cli[f]) if isinstance(c, ast.Call)
                         and isinstance(c.func, ast.Name) and c.func.id in cli]
        packages = {u.package for u in cli_uses if u.function is not None and u.function.name in funcs}
        start = {m for f in funcs for m in _scan(cli[f], "ocellus/cli.py")[1]}
        todo = [c for m in start for c in (f"{m}.py", f"{m}/__init__.py") if c in files]
        seen = set()
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += files[m][2]
        packages |= {u.package for m in seen for u in files[m][1] if not guarded(u)}
        reach[name[4:].replace("_", "-")] = packages
    return reach


def test_every_third_party_import_is_a_declared_dependency():
    declared = CORE | set().union(*EXTRAS.values()) | set().union(*readme_allowed().values())
    missing = sorted({f"{u.file}:{u.line} imports {u.package}" for _, uses, _, _ in scanned().values() for u in uses
                      if u.package not in declared})
    assert not missing, "not in pyproject's dependencies or an extra:\n" + "\n".join(missing)


def test_each_command_needs_only_the_core_and_the_extras_its_readme_row_names():
    allowed, reach = readme_allowed(), command_reach()
    assert {"serve", "train", "eval", "bench", "generate"} <= set(reach)          # the parse found the commands
    assert "transformers" in reach["bench"] and "gguf" in reach["bench"] and "starlette" in reach["serve"]
    problems = []
    for command, packages in sorted(reach.items()):
        if command not in allowed:
            problems.append(f"`ocellus {command}` has no row in README's command table")
            continue
        ok = CORE | EXTRAS["hub"] | set().union(*(EXTRAS.get(e, {e}) for e in allowed[command]))
        problems += [f"`ocellus {command}` imports {p}: name its extra in the README row" for p in sorted(packages - ok)]
    assert not problems, "\n".join(problems)


def test_an_optional_import_fails_naming_its_install_line():
    files = scanned()
    problems = []
    for f, (_, uses, _, _) in files.items():
        for u in uses:
            if u.package in CORE or guarded(u):
                continue
            caller = GUARDED_BY.get(f)     # the only way in is through a guard in this module
            if caller is None or install_line(u.package) not in " ".join([files[caller][3],
                                                                           *(c.guards for c in files[caller][1])]):
                problems.append(f"{f}:{u.line} imports {u.package} without an ImportError naming "
                                f"{install_line(u.package)!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_readme_names_every_extra(extra):
    assert f"`{extra}`" in README or f"ocellus[{extra}]" in README, f"README.md does not name the [{extra}] extra"
