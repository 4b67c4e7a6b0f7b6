#!/usr/bin/env python
"""Can the default model's decoder learn spatial relations at all? Its text decoder trained on "which side"
questions ("Is the red circle to the left or to the right of the blue square?") over IDEAL image tokens, made
here from each scene's ground truth instead of a ViT, so that what the tokens hold is known exactly
(docs/VLM_COMPARISON.md, session 16; issue 18 item 6). Tokens (learned embeddings, trained with the decoder):

    objects     one token per object, in random order: colour + shape + Linear(x, y of its centre)
    grid        16 tokens, a 4x4 grid of 12 px cells in row order (as the default ViT's patches): each cell holds
                the colour + shape of the object over its centre (or containing the object's centre), else a
                background token; where things are is only the token order (RoPE), as in the default model
    grid+pos    grid + Linear(x, y of the cell) in every token's value
    grid+objpos grid + Linear(x, y of the centre of the object over the cell) in that cell's value, background cells
                none (as a box-head ViT's patches, which regress their object's box: every cell of an object says
                where the whole object is)
    grid+objpos+bg  grid+objpos with each background cell's own (x, y) in its value (the box head's target for a
                background patch is its own cell)
    vit         NOT ideal: the 16 patch tokens of a real scene ViT (--vit, frozen; default the box-head ViT, whose
                patches regress their object's box) on the rendered scene, through a fresh LLaVA-style MLP
                connector trained with the decoder: the same questions on real tokens
    grid+slots  the grid (with its cells' positions added) regrouped into K slot tokens by slot attention, each slot
                given Linear(x, y of its attention's centroid): one token per object learned from the grid

--rope 2d gives the grid tokens 2D rotary positions (row, column), as Qwen2-VL's M-RoPE gives its image keys: the
rotary pairs split into a row band and a column band (mrope_section (0, R/4, R/4)), the text after the grid continues
at 4, 5, ... on both; --theta sets the rotary base (the decoder's 1e4 leaves a 16-dim head's last pairs turning
< 0.01 rad per position, which a 4-cell axis cannot use).

--position P mixes one-object "which half" questions (shapes.py `position`) into P of the training samples, a
curriculum: one lookup and one read before two lookups and a comparison; --lone asks them in scenes of one object
only (the read then pays off before the lookup does). Held-out accuracy on 300 relation questions of other scenes
every 250 steps (chance 50%).

    python scripts/probe_spatial_ideal.py objects --steps 3000 --position 0.5
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

import ocellus
from ocellus.data.shapes import SHAPES, ShapesConfig, make_qa, make_scene, render
from ocellus.errors import InputError
from ocellus.nn.mrope import check_mrope_section
from ocellus.nn.rope import RotaryEmbedding

TEXT = "runs/llava_tiny_shapes/text/model"       # the default model's decoder before any image (make_default_model)
BOX_VIT = "runs/qwen_vl_tiny_shapes/vit/model"    # recipes/qwen_vl_tiny_shapes/vit.yaml: the scene ViT + box head
PIXELS = "runs/s18/align_box/model"               # a LLaVA on that ViT: its processor makes the ViT's pixel values
CELL, GRID = 12, 4                                # 48 px scenes, the default ViT's 12 px patches


class SlotConnector(nn.Module):
    """Slot attention (Locatello et al., 2020) as a connector: [B, N, C] patch features + [N, 2] or [B, N, 2]
    patch centres (in [-0.5, 0.5]) -> [B, S, out_dim]. The slots compete for patches (softmax over slots), so each
    patch goes mostly to one slot, and each slot's centroid (the attention-weighted mean of its patches' centres)
    is written into its value: one token per object with its place, if the slots find the objects."""

    def __init__(self, in_dim: int, out_dim: int, n_slots: int, iters: int = 3):
        super().__init__()
        self.iters, self.scale = iters, in_dim ** -0.5
        self.pos = nn.Linear(2, in_dim)                 # the patches' place, so two alike objects stay apart
        self.norm_in = nn.LayerNorm(in_dim)
        # a learned start per slot (not one shared mean + noise): deterministic, and the slots start apart
        self.init = nn.Parameter(torch.randn(n_slots, in_dim) * in_dim ** -0.5)
        self.q = nn.Linear(in_dim, in_dim, bias=False)
        self.k = nn.Linear(in_dim, in_dim, bias=False)
        self.v = nn.Linear(in_dim, in_dim, bias=False)
        self.norm_slots = nn.LayerNorm(in_dim)
        self.gru = nn.GRUCell(in_dim, in_dim)
        self.mlp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, 2 * in_dim), nn.GELU(),
                                 nn.Linear(2 * in_dim, in_dim))
        self.where = nn.Linear(2, in_dim)               # the centroid, written into the slot's value
        self.out = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        xy = xy.to(x.dtype).expand(B, N, 2)
        x = self.norm_in(x + self.pos(xy))
        k, v = self.k(x), self.v(x)                                                    # [B, N, C]
        slots = self.init.to(x.dtype).expand(B, -1, -1)                                # [B, S, C]
        S = slots.shape[1]
        for _ in range(self.iters):
            logits = self.q(self.norm_slots(slots)) @ k.transpose(1, 2) * self.scale     # [B, S, N]
            attn = logits.softmax(dim=1) + 1e-8                                          # slots compete for a patch
            weights = attn / attn.sum(-1, keepdim=True)                                  # a mean over each slot's patches
            updates = weights @ v                                                        # [B, S, C]
            slots = self.gru(updates.reshape(B * S, C), slots.reshape(B * S, C)).view(B, S, C)
            slots = slots + self.mlp(slots)
        centroid = weights @ xy                                                          # [B, S, 2]
        return self.out(slots + self.where(centroid))


class VitTokens(nn.Module):
    """A scene -> [16, D]: a frozen ViT's last-layer patch tokens (CLS dropped, raster order) on the rendered
    scene, through a trainable 2-layer GELU MLP (LLaVA-1.5's connector). pixels: PIL image -> [1, 3, H, W]."""

    def __init__(self, vit: nn.Module, pixels, dim: int):
        super().__init__()
        self.vit, self.pixels = vit.eval().requires_grad_(False), pixels
        width = self.vit.config.hidden_size
        self.connector = nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, scene, rng: np.random.Generator) -> torch.Tensor:
        with torch.no_grad():
            patches = self.vit(self.pixels(render(scene)), output_hidden_states=True).hidden_states[-1][0, 1:]  # [16, C]
        return self.connector(patches)                                                   # [16, D]


class IdealTokens(nn.Module):
    """A scene -> [K, D] image tokens from its ground truth (the module doc's variants)."""

    def __init__(self, variant: str, dim: int, colours: list[str]):
        super().__init__()
        self.variant, self.colours = variant, colours
        self.colour = nn.Embedding(len(colours) + 1, dim)      # the last: background
        self.shape = nn.Embedding(len(SHAPES) + 1, dim)
        self.where = nn.Linear(2, dim)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02)
        if variant == "grid+slots":
            self.slots = SlotConnector(dim, dim, n_slots=5)

    def forward(self, scene, rng: np.random.Generator) -> torch.Tensor:
        if self.variant == "objects":
            objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
            c = torch.tensor([self.colours.index(o.colour) for o in objs])
            s = torch.tensor([SHAPES.index(o.shape) for o in objs])
            xy = torch.tensor([[o.center[0] / scene.image_size - 0.5, o.center[1] / scene.image_size - 0.5]
                               for o in objs])
            return self.colour(c) + self.shape(s) + self.where(xy)                      # [K, D]
        c, s = torch.full((GRID * GRID,), len(self.colours)), torch.full((GRID * GRID,), len(SHAPES))
        where = torch.zeros(GRID * GRID, 2)                                             # grid+objpos: 0 on background
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            own = min(GRID - 1, int(o.center[1] / CELL)) * GRID + min(GRID - 1, int(o.center[0] / CELL))
            for k in range(GRID * GRID):
                cx, cy = (k % GRID) * CELL + CELL // 2, (k // GRID) * CELL + CELL // 2
                if k == own or (x0 <= cx < x1 and y0 <= cy < y1):
                    c[k], s[k] = self.colours.index(o.colour), SHAPES.index(o.shape)
                    where[k] = torch.tensor([o.center[0] / scene.image_size - 0.5, o.center[1] / scene.image_size - 0.5])
        tokens = self.colour(c) + self.shape(s)                                         # [16, D]
        k = torch.arange(GRID * GRID)
        xy = torch.stack([k % GRID, k // GRID], 1) / (GRID - 1) - 0.5                  # [16, 2]
        if self.variant == "grid+pos":
            tokens = tokens + self.where(xy)
        if self.variant == "grid+objpos":
            tokens = tokens + self.where(where) * (c < len(self.colours))[:, None]       # objects' cells only
        if self.variant == "grid+objpos+bg":
            tokens = tokens + self.where(torch.where((c < len(self.colours))[:, None], where, xy))
        if self.variant == "grid+slots":
            return self.slots(tokens[None], xy)[0]
        return tokens


def token_positions(rope: str, n_image: int, T: int) -> torch.Tensor:
    """Rotary ids of a sequence whose first n_image tokens are the grid: "1d" -> [T] (0, 1, ...), "2d" -> [3, T]
    M-RoPE ids, grid cell k at (0, row, col), the text after it at GRID, GRID + 1, ... on every axis."""
    if rope == "1d":
        return torch.arange(T)
    k = torch.arange(n_image)
    grid = torch.stack([torch.zeros_like(k), k // GRID, k % GRID])                     # [3, 16]
    return torch.cat([grid, (GRID + torch.arange(T - n_image)).expand(3, -1)], 1)      # [3, T]


def question(rng: np.random.Generator, cfg: ShapesConfig, kind: str, lone: bool = False):
    """(scene, question, answer, the two answers it chooses between) of the given kind (position: in a scene of
    one object when lone)."""
    while True:
        scene = make_scene(rng, replace(cfg, min_objects=1, max_objects=1) if lone else cfg)
        try:
            _, q, a = make_qa(rng, scene, cfg, kind)
        except InputError:                              # no object wholly in one half: another scene
            continue
        if " or " not in q:                             # the "which side" form only (not the yes / no one)
            continue
        pair = next(p for p in (("left", "right"), ("top", "bottom"), ("above", "below")) if a in p)
        return scene, q, a, pair


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", choices=("objects", "grid", "grid+pos", "grid+objpos", "grid+objpos+bg", "grid+slots", "vit"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--position", type=float, default=0.0, help="share of one-object position questions")
    ap.add_argument("--lone", action="store_true", help="position questions in one-object scenes")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--seed", type=int, default=0, help="init and training stream (the held-out set stays the same)")
    ap.add_argument("--vit", default=BOX_VIT, help="vit variant: the frozen ViT")
    ap.add_argument("--pixels", default=PIXELS, help="vit variant: a model dir whose processor makes its pixel values")
    ap.add_argument("--rope", choices=("1d", "2d"), default="1d", help="grid token positions: raster order or (row, col)")
    ap.add_argument("--theta", type=float, default=None, help="rotary base (default: the decoder's own)")
    ap.add_argument("--question-first", action="store_true",
                    help="the question before the image tokens, ' Answer:' after them: each image token can see what is asked")
    args = ap.parse_args(argv)
    if args.rope == "2d" and args.variant in ("objects", "grid+slots"):
        ap.error("--rope 2d places grid tokens; the objects variant has no grid")
    if args.rope == "2d" and args.question_first:
        ap.error("--rope 2d places the grid first; --question-first puts the question there")
    torch.manual_seed(args.seed)
    tok, model = ocellus.load_processor(args.text), ocellus.load(args.text).train()
    cfg = ShapesConfig(image_size=GRID * CELL, min_objects=2, max_objects=4)
    if args.variant == "vit":
        processor = ocellus.load_processor(args.pixels)
        ideal = VitTokens(ocellus.load(args.vit), lambda image: processor.image_inputs([image])[0]["pixel_values"],
                          model.config.hidden_size)
    else:
        ideal = IdealTokens(args.variant, model.config.hidden_size, list(cfg.colours))
    rope = model.config.rope
    if args.theta:   # the decoder's own rotary table at another base
        model.rotary_emb = RotaryEmbedding(replace(rope, theta=args.theta))
    if args.rope == "2d":   # a row band and a column band, checked as a Qwen2-VL config's section is
        model.mrope_section = check_mrope_section((0, rope.rotary_dim // 4, rope.rotary_dim // 2 - rope.rotary_dim // 4),
                                                  rope.rotary_dim)
    embed = model.embed_tokens
    words = {w: tok.encode(" " + w, add_special_tokens=False)[0] for p in (("left", "right"), ("top", "bottom"),
                                                                           ("above", "below")) for w in p}

    def encode(scene, q, a, rng):   # -> (embeddings [T, D], labels [T], where the answer is predicted)
        image = ideal(scene, rng)
        ai = tok.encode(" " + a, add_special_tokens=False)
        if args.question_first:   # [question] [image] " Answer:" answer
            qi, pi = tok.encode(" " + q, add_special_tokens=False), tok.encode(" Answer:", add_special_tokens=False)
            x = torch.cat([embed(torch.tensor(qi)), image, embed(torch.tensor(pi + ai))], 0)
            at = len(qi) + len(image) + len(pi)
        else:                     # [image] question " Answer:" answer
            qi = tok.encode(" " + q + " Answer:", add_special_tokens=False)
            x = torch.cat([image, embed(torch.tensor(qi + ai))], 0)
            at = len(image) + len(qi)
        labels = torch.full((len(x),), -100)
        labels[at:] = torch.tensor(ai)
        return x, labels, at, token_positions(args.rope, len(image), len(x))

    rng, held_rng = np.random.default_rng(args.seed + 1), np.random.default_rng(999)
    held = [question(held_rng, cfg, "spatial") for _ in range(300)]

    @torch.no_grad()
    def accuracy() -> float:
        model.eval()
        right = 0
        for scene, q, a, pair in held:
            x, _, at, pos = encode(scene, q, a, held_rng)
            logits = model(inputs_embeds=x[None, :at], position_ids=pos[..., None, :at]).logits[0, -1]
            right += int(pair[int(logits[[words[w] for w in pair]].argmax())] == a)
        model.train()
        return right / len(held)

    trained = [p for p in list(model.parameters()) + list(ideal.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        rows = []
        for _ in range(args.batch):
            kind = "position" if rng.random() < args.position else "spatial"
            rows.append(encode(*question(rng, cfg, kind, lone=args.lone and kind == "position")[:3], rng))
        T = max(len(x) for x, _, _, _ in rows)
        X = torch.zeros(len(rows), T, model.config.hidden_size)
        L, M = torch.full((len(rows), T), -100), torch.zeros(len(rows), T, dtype=torch.long)
        P = torch.zeros((3, len(rows), T) if args.rope == "2d" else (len(rows), T), dtype=torch.long)
        for i, (x, lab, _, pos) in enumerate(rows):             # right padding, masked
            X[i, :len(x)], L[i, :len(x)], M[i, :len(x)] = x, lab, 1
            P[..., i, :len(x)] = pos
        logits = model(inputs_embeds=X, attention_mask=M, position_ids=P).logits
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), L[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            print(f"{args.variant} rope {args.rope} theta {args.theta} position {args.position}{' lone' if args.lone else ''}"
                  f"{' question-first' if args.question_first else ''}{f' seed {args.seed}' if args.seed else ''} step {step}: loss {loss.item():.3f}, held-out relation "
                  f"accuracy {accuracy():.3f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
