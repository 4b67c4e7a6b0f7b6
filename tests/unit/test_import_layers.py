"""One-way layers (docs/ARCHITECTURE.md, "Layers"): every import under ocellus/ points down or sideways.

Every `.py` under ocellus/ is parsed (ast, nothing imported); every `import` / `from ... import` that names an
ocellus module, at module level or inside a function, relative or absolute, is resolved to a module and
that module to a layer. An import of a higher layer fails the test naming file:line; so does a cycle between
packages (directories) or between layers. `import ocellus` / `from ocellus import load` count as the top layer
(the package root holds the public API).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "ocellus"

# Low to high: a module may import its own layer and any layer to its left.
LAYERS = ("errors", "kernels", "nn", "hub", "data", "infer", "models", "families", "viz", "eval", "train", "serve",
          "cli/api")
# the public API and the commands: the package root and its top-level modules
TOP_MODULES = frozenset({"ocellus", "ocellus.cli", "ocellus.chat", "ocellus.demo", "ocellus.bench",
                         "ocellus.bench_vlm", "ocellus.bench_llamacpp", "ocellus.bench_serve", "ocellus.compare"})

# Known upward imports left to remove: (file, imported module) -> why it is still here. Each entry is a
# debt with an owner; the list only shrinks (test_allow_list_is_live fails on an entry that no longer occurs).
# Empty since issue 19's leftovers: keep it so.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    file: str          # relative to the tree's parent, e.g. "ocellus/data/processor.py"
    line: int
    source: str        # the importing module, e.g. "ocellus.data.processor"
    target: str        # the imported module (a name imported from a package that is not a submodule: the package)
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """ocellus.models.families.* -> families; the root and its top-level command modules -> cli/api;
    ocellus.<package>.* -> <package>."""
    if module in TOP_MODULES:
        return "cli/api"
    parts = module.split(".")
    if parts[1:3] == ["models", "families"]:
        return "families"
    return parts[1]


def package_of(module: str, modules: dict[str, Path]) -> str:
    """The directory a module sits in (a package's __init__ belongs to the package itself); a module
    directly under the root (errors.py, cli.py, ...) is a node of its own."""
    path = modules.get(module)
    if (path is not None and path.name == "__init__.py") or module.count(".") == 1:
        return module
    return module.rpartition(".")[0]


def scan(root: Path = ROOT) -> tuple[list[Import], dict[str, Path]]:
    """Every import of an ocellus module in every .py under root."""
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name
    found: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name == top or a.name.startswith(top + ".")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if not (module == top or module.startswith(top + ".")):
                    continue
                # `from pkg import sub` imports the submodule; `from pkg import name` the package itself
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            else:
                continue
            rel = str(path.relative_to(root.parent))
            found += [Import(rel, node.lineno, name, t, id(node) in in_function) for t in dict.fromkeys(targets)]
    return found, modules


def upward(imports: list[Import]) -> list[Import]:
    return [i for i in imports if LAYERS.index(layer_of(i.target)) > LAYERS.index(layer_of(i.source))]


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(root: Path = ROOT, allowed: dict = ALLOWED) -> list[str]:
    """Every upward import not in `allowed`, then every cycle between packages or layers, as messages."""
    imports, modules = scan(root)
    kept = [i for i in imports if (i.file, i.target) not in allowed]
    out = [f"{i.file}:{i.line}: {i.source} ({layer_of(i.source)}) imports {i.target} ({layer_of(i.target)}), "
           f"a higher layer" for i in upward(kept)]
    node = {"package": lambda m: package_of(m, modules), "layer": layer_of}
    for kind, of in node.items():
        first: dict[tuple[str, str], Import] = {}
        for i in kept:
            if of(i.source) != of(i.target):
                first.setdefault((of(i.source), of(i.target)), i)
        for component in cycles(set(first)):
            where = [f"{a} -> {b} ({i.file}:{i.line})" for (a, b), i in sorted(first.items())
                     if a in component and b in component]
            out.append(f"{kind} cycle through {component}: " + "; ".join(where))
    return out


# ---- the tree ----------------------------------------------------------------------------------------------

def test_no_upward_import_and_no_cycle():
    problems = violations()
    assert not problems, "imports that break the layer order (docs/ARCHITECTURE.md, Layers):\n" + "\n".join(problems)


def test_allow_list_is_live():
    """Every allowed import still occurs: a removed one must leave the list (it only shrinks)."""
    imports, _ = scan()
    present = {(i.file, i.target) for i in imports}
    stale = sorted(set(ALLOWED) - present)
    assert not stale, f"remove from ALLOWED (no longer imported upward): {stale}"


def test_every_module_has_a_layer():
    _, modules = scan()
    for name in modules:
        assert layer_of(name) in LAYERS, f"{name}: no layer (add its package to LAYERS and docs/ARCHITECTURE.md)"


# ---- the checker itself, on a synthetic tree -----------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ocellus"
    for rel, text in {"__init__.py": "", "errors.py": "", "nn/__init__.py": "", "data/__init__.py": "",
                      "models/__init__.py": "", "models/families/__init__.py": "", "train/__init__.py": "",
                      "eval/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_accepts_downward_imports(tmp_path):
    root = _tree(tmp_path, {
        "nn/a.py": "from ocellus.errors import X\n",
        "data/b.py": "from ..nn import a\nfrom ocellus.nn.a import f\n",
        "models/families/c.py": "from ocellus.models import d\n",
        "models/d.py": "import ocellus.data.b\n",
        "train/e.py": "def f():\n    from ocellus.eval import metrics\n",
        "eval/metrics.py": "",
        "cli.py": "import ocellus\nfrom ocellus.train import e\n",
    })
    assert violations(root, allowed={}) == []


@pytest.mark.parametrize("source, text, target", [
    ("data/b.py", "from ocellus.models.families import c\n", "ocellus.models.families.c"),    # absolute
    ("data/b.py", "import ocellus.train.e\n", "ocellus.train.e"),                             # import a.b.c
    ("nn/a.py", "def f():\n    from ..data import b\n", "ocellus.data.b"),                   # relative, in a function
    ("models/d.py", "def f():\n    import ocellus\n    return ocellus.load\n", "ocellus"),   # the package root
    ("models/families/c.py", "from ocellus import load\n", "ocellus"),                      # a name of the root
    ("eval/m.py", "from ocellus.train import e\n", "ocellus.train.e"),                       # eval sits below train
])
def test_checker_names_an_upward_import(tmp_path, source, text, target):
    root = _tree(tmp_path, {"data/b.py": "", "models/d.py": "", "models/families/c.py": "", "train/e.py": "",
                            "nn/a.py": "", source: "x = 1\n" + text})
    found = violations(root, allowed={})
    line = 2 + text.split("import")[0].count("\n")
    assert len(found) == 1 and found[0].startswith(f"ocellus/{source}:{line}: ") and f"imports {target} " in found[0], found
    # an allow-list entry silences exactly that import
    assert violations(root, allowed={(f"ocellus/{source}", target): "debt"}) == []


def test_checker_finds_a_package_cycle_within_a_layer(tmp_path):
    root = _tree(tmp_path, {"models/text/__init__.py": "", "models/vision/__init__.py": "",
                            "models/text/t.py": "from ocellus.models.vision import v\n",
                            "models/vision/v.py": "def f():\n    from ocellus.models.text import t\n"})
    found = violations(root, allowed={})
    assert len(found) == 1 and found[0].startswith("package cycle through ['ocellus.models.text', "
                                                   "'ocellus.models.vision']"), found
    assert "ocellus/models/vision/v.py:2" in found[0] and "ocellus/models/text/t.py:1" in found[0]



# ---- the one upward reference by design: the checkpoint registry names its families' modules ---------------

# registry entries whose module sits outside models/ and models/families/ (the layers a Family belongs to)
REGISTRY_ALLOWED: dict[str, str] = {}


def test_registry_names_modules_of_the_model_layers():
    """hub/families.ARCHITECTURES names, for each architecture, the module that makes its Family (imported on
    first use): that module exists, sits in models/ or models/families/, makes a Family, and its
    MODEL_TYPES / MODEL_TYPE are known to check_model_type."""
    import importlib

    from ocellus.hub import families
    _, modules = scan()
    for arch, entry in families.ARCHITECTURES.items():
        if not isinstance(entry, families.FamilyRef):
            continue
        assert entry.module in modules, f"{arch}: no module {entry.module}"
        assert layer_of(entry.module) in ("models", "families") or entry.module in REGISTRY_ALLOWED, \
            f"{arch}: {entry.module} is in layer {layer_of(entry.module)}, not models / families"
        assert isinstance(entry.load(), families.Family), arch
        module = importlib.import_module(entry.module)
        types = set(getattr(module, "MODEL_TYPES", ())) | {getattr(module, "MODEL_TYPE", None)} - {None}
        assert types <= families.MODEL_TYPES, f"{entry.module}: model types {types - families.MODEL_TYPES} unknown"


def test_loading_a_llama_imports_only_what_a_llama_needs(tmp_path):
    """`ocellus.load` of a Llama dir, in a fresh interpreter: the decoder, its family's folder
    (models/families/decoder/) and what they use (nn, hub, the generation engine and its compiled kernels), no
    other family, vision, contrastive, training, evaluation or serving code."""
    import subprocess
    import sys

    import ocellus
    from ocellus.models.text.decoder import DecoderConfig, DecoderLM
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 16,
           "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
    ocellus.save(DecoderLM(DecoderConfig.from_hf(cfg)), tmp_path / "llama")
    code = (f"import sys, ocellus; ocellus.load({str(tmp_path / 'llama')!r}); "
            "print(' '.join(m for m in sys.modules if m.startswith('ocellus.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "ocellus.models.text.decoder" in loaded
    own = ("ocellus.models.families", "ocellus.models.families.decoder", "ocellus.models.families.decoder.checkpoint")
    wanted = ("errors", "kernels", "nn", "hub", "infer", "models")
    wrong = [m for m in loaded if m not in own and (layer_of(m) not in wanted
             or m.startswith(("ocellus.models.families", "ocellus.models.contrastive", "ocellus.models.vision")))]
    assert not wrong, f"a Llama load imports {wrong}"


def test_generator_kinds_built_elsewhere_name_modules_of_models():
    """models/generative/checkpoint.BUILDERS names, per generator kind built outside the package (SEED's codec), a
    module and function imported on first build: the module exists, sits in models/ (a generator is a model), and
    the function is there. A by-name reference, like the family registry's, so no import edge closes a cycle."""
    import importlib

    from ocellus.models.generative import checkpoint
    _, modules = scan()
    assert set(checkpoint.BUILDERS) <= set(checkpoint.KINDS)
    for kind, (module, function) in checkpoint.BUILDERS.items():
        assert module in modules and layer_of(module) == "models", f"{kind}: {module}"
        assert callable(getattr(importlib.import_module(module), function)), f"{kind}: {module}.{function}"
