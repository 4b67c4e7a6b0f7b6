"""Is colour still bound to shape in what the decoder reads? A probe on the image tokens a vision-language
model hands its decoder (the connector's output), asked the two binding questions of shapes-vqa:
  colour-of-shape   "What colour is the <shape>?"   (the shape unique in the scene) -> its colour
  shape-of-colour   "What shape is the <colour> object?" (the colour unique)        -> its shape
The probe is one attention read (AttentionProbe: the named shape / colour asks, the tokens answer), trained on
scenes of a seed no recipe or eval uses and scored on others: what one decoder read COULD get from these tokens.
A family whose decoder answers far below its probe is held back by reading, not by what its bridge keeps;
a probe as low as the decoder says the bridge has already lost the binding.

    python scripts/probe_binding.py MODEL_DIR [MODEL_DIR ...]     (LLaVA, BLIP-2 / MiniGPT-4, Qwen-VL, Flamingo)
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

import ocellus
from ocellus.data.shapes import COLOURS, SHAPES, ShapesConfig, make_scene, render

SEED = 4242          # scenes neither a recipe nor `ocellus eval` draws


def decoder_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, T, D]: the image tokens the decoder reads (Flamingo: the Perceiver's latents,
    which its gated cross-attention reads; every other family: the connector output spliced into the text)."""
    if hasattr(model, "resample"):
        return model.resample(pixel_values)
    return model.image_features(pixel_values)


def binding_samples(model, processor, n_scenes: int, size: int = 48):
    """-> image tokens [N, T, D], the named attribute's index, the answer's index, and which question (0: colour of
    a shape, 1: shape of a colour), one row per question a scene supports."""
    rng = np.random.default_rng(SEED)
    cfg = ShapesConfig(image_size=size, seed=SEED, min_size=max(0.18, 6.5 / size), min_objects=2)
    feats, named, answer, kind = [], [], [], []
    colours = list(COLOURS)
    for _ in range(n_scenes):
        scene = make_scene(rng, cfg)
        pix = processor.image_inputs([render(scene)])[0]["pixel_values"]
        with torch.no_grad():
            f = decoder_tokens(model, pix)[0].float()                                   # [T, D]
        shapes = [o.shape for o in scene.objects]
        cols = [o.colour for o in scene.objects]
        for o in scene.objects:
            if shapes.count(o.shape) == 1:
                feats.append(f); named.append(SHAPES.index(o.shape)); answer.append(colours.index(o.colour)); kind.append(0)
            if cols.count(o.colour) == 1:
                feats.append(f); named.append(colours.index(o.colour)); answer.append(SHAPES.index(o.shape)); kind.append(1)
    return torch.stack(feats), torch.tensor(named), torch.tensor(answer), torch.tensor(kind)


class AttentionProbe(nn.Module):
    """One attention read, as a decoder layer makes it: the named attribute is the query, each image token
    a key and a value; the answer is classified from the weighted sum of values. Its bias (find by one
    attribute, read another) is the decoder's, so it needs few scenes, unlike a probe on the flattened tokens."""

    def __init__(self, width: int, n_named: int, n_answers: int, hidden: int = 64):
        super().__init__()
        self.query = nn.Embedding(n_named, hidden)
        self.key, self.value = nn.Linear(width, hidden), nn.Linear(width, hidden)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, n_answers))

    def forward(self, tokens: torch.Tensor, named: torch.Tensor) -> torch.Tensor:   # [N, T, D], [N]
        scores = torch.einsum("ntd,nd->nt", self.key(tokens), self.query(named)) / self.key.out_features ** 0.5
        return self.out(torch.einsum("nt,ntd->nd", scores.softmax(-1), self.value(tokens)))   # [N, answers]


def probe_accuracy(x, named, answer, kind, which: int, steps: int = 800, seed: int = 0) -> float:
    """Held-out accuracy of an AttentionProbe (named attribute -> answer over the image tokens) for one
    question kind: 75% of its rows train it, the rest score it."""
    torch.manual_seed(seed)
    rows = (kind == which).nonzero().squeeze(1)
    rows = rows[torch.randperm(len(rows))]
    tokens = x[rows]                                                                 # [N, T, D]
    tokens = (tokens - tokens.mean((0, 1))) / (tokens.std((0, 1)) + 1e-6)
    y, q = answer[rows], named[rows]
    cut = int(0.75 * len(rows))
    probe = AttentionProbe(tokens.shape[2], len(COLOURS), len(COLOURS) if which == 0 else len(SHAPES))
    opt = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(probe(tokens[:cut], q[:cut]), y[:cut]).backward()
        opt.step()
    with torch.no_grad():
        return (probe(tokens[cut:], q[cut:]).argmax(1) == y[cut:]).float().mean().item()


def main(dirs: list[str], n_scenes: int = 1500) -> None:
    print("| model | image tokens x width | colour of a shape: probe | shape of a colour: probe | rows (train + test) |")
    print("|---|---|---|---|---|")
    for d in dirs:
        model, processor = ocellus.load(d).eval(), ocellus.load_processor(d)
        x, named, answer, kind = binding_samples(model, processor, n_scenes)
        accs = [probe_accuracy(x, named, answer, kind, which) for which in (0, 1)]
        print(f"| {d} | {x.shape[1]} x {x.shape[2]} | {100 * accs[0]:.1f} | {100 * accs[1]:.1f} | {len(x)} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
