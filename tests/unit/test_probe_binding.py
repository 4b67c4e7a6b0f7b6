"""scripts/probe_binding.py's probe tells bound tokens from blended ones: on synthetic image tokens where each
token holds one object's (shape, colour), one attention read answers "what colour is the <shape>?"; where every
token holds the same blend of the scene's objects, the binding is gone and it cannot beat a guess."""
import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_binding.py"
spec = importlib.util.spec_from_file_location("probe_binding", SCRIPT)
probe_binding = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_binding)
N_SHAPES, N_COLOURS = len(probe_binding.SHAPES), len(probe_binding.COLOURS)


def _scenes(n: int, blended: bool, seed: int = 0):
    """n two-object scenes as 4 tokens [shape one-hot | colour one-hot | noise] -> tokens, asked shape, colour."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.stack([torch.randperm(N_SHAPES, generator=g)[:2] for _ in range(n)])     # [n, 2] distinct
    colours = torch.stack([torch.randperm(N_COLOURS, generator=g)[:2] for _ in range(n)])   # [n, 2] distinct
    objects = torch.cat([torch.nn.functional.one_hot(shapes, N_SHAPES),
                         torch.nn.functional.one_hot(colours, N_COLOURS)], -1).float()      # [n, 2, S+C]
    if blended:   # each token carries both objects: shapes and colours present, their pairing lost
        objects = objects.mean(1, keepdim=True).expand(-1, 2, -1)
    tokens = torch.cat([objects, objects], 1)                                              # [n, 4, S+C]
    tokens = torch.cat([tokens, 0.05 * torch.randn(n, 4, 8, generator=g)], -1)
    which = torch.randint(0, 2, (n,), generator=g)
    rows = torch.arange(n)
    return tokens, shapes[rows, which], colours[rows, which]


def test_probe_reads_bound_tokens_and_not_blended_ones():
    x, named, answer = _scenes(600, blended=False)
    kind = torch.zeros(len(x), dtype=torch.long)
    assert probe_binding.probe_accuracy(x, named, answer, kind, 0, steps=300) > 0.95
    x, named, answer = _scenes(600, blended=True)
    assert probe_binding.probe_accuracy(x, named, answer, kind, 0, steps=300) < 0.65   # one of two colours: 0.5
