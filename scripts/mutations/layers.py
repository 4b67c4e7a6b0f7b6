"""The import-layer checker (tests/unit/test_import_layers.py): the checker itself is mutated, its tests on a
synthetic tree must go red."""
from mutations import Mutation

LAYERS = "tests/unit/test_import_layers.py"
T = [LAYERS]

MUTATIONS = [
    Mutation("layers: imports inside functions are not read", LAYERS,
             "        for node in ast.walk(tree):\n", "        for node in tree.body:\n", T),
    Mutation("layers: a relative import resolves one package too high", LAYERS,
             "base = base[:len(base) - (node.level - 1)]", "base = base[:len(base) - node.level]", T),
    Mutation("layers: `from ocellus import load` (the package root) is not an import of the top layer", LAYERS,
             "                if not (module == top or module.startswith(top + \".\")):",
             "                if not module.startswith(top + \".\"):", T),
    Mutation("layers: a cycle of two packages is not reported", LAYERS,
             "            if len(component) > 1:", "            if len(component) > 2:", T),
]
