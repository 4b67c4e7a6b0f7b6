"""Decoding strategies compared on captions: greedy, beam search and nucleus sampling, scored for
accuracy (BLEU-4, CIDEr-D from ocellus/eval/caption.py, exact match with the true caption) and for
diversity (distinct-1/2: unique n-grams / all n-grams of the generated set; self-BLEU-4: BLEU of each
caption against all the others, lower = more diverse).

The BLIP paper (Li et al. 2022, sec. 4.4 and table 2) compares beam search and nucleus sampling as
the captioner's decoder for CapFilt: beam search writes safe, common captions; nucleus sampling
(p = 0.9) writes more diverse and surprising ones, noisier by the filter's count, yet better
synthetic data. This prints the same comparison for a BLIP checkpoint on held-out shapes scenes:

    python -m ocellus.eval.decoding --model runs/blip_tiny_shapes/model [--n 200] [--beams 3] [--top-p 0.9]
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch

from ocellus.errors import InputError
from ocellus.eval.caption import cider_d, corpus_bleu, tokenize_caption
from ocellus.hub.checkpoint import load_model
from ocellus.data.image import image_config, preprocess
from ocellus.data.shapes import caption, render
from ocellus.data.shapes_pairs import same_caption, scenes
from ocellus.data.tokenizer import Tokenizer
from ocellus.eval.retrieval import EVAL_SEED, SHAPES_RENDER_SIZE
from ocellus.models.contrastive.blip import BLIP

STRATEGIES = {"greedy": {}, "beam": {"num_beams": 3}, "nucleus": {"do_sample": True, "top_p": 0.9}}


def distinct_n(captions: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over the set (Li et al. 2016)."""
    grams = Counter(tuple(t[i:i + n]) for t in map(tokenize_caption, captions) for i in range(len(t) - n + 1))
    return len(grams) / max(1, sum(grams.values()))


def self_bleu(captions: list[str]) -> float:
    """BLEU-4 of each caption against every other caption of the set as references (Zhu et al. 2018)."""
    if len(captions) < 2:
        raise InputError("self-BLEU needs at least two captions")
    return corpus_bleu(captions, [captions[:i] + captions[i + 1:] for i in range(len(captions))]).bleu


def score(captions: list[str], truths: list[str]) -> dict[str, float]:
    refs = [[t] for t in truths]
    return {"BLEU-4": corpus_bleu(captions, refs).bleu, "CIDEr-D": cider_d(captions, refs).score,
            "exact": sum(same_caption(c, t) for c, t in zip(captions, truths)) / len(truths),
            "distinct-1": distinct_n(captions, 1), "distinct-2": distinct_n(captions, 2),
            "self-BLEU-4": self_bleu(captions)}


@torch.no_grad()
def compare(model_dir, n: int = 200, strategies: dict | None = None, max_new_tokens: int = 24,
            seed: int = 0) -> dict[str, dict[str, float]]:
    """Caption n held-out shapes scenes (eval/retrieval.py's held-out seed) with each strategy."""
    model = load_model(model_dir)
    if not isinstance(model, BLIP):
        raise InputError(f"{model_dir} holds a {type(model).__name__}; decoding strategies need a BLIP captioner")
    tok = Tokenizer.from_dir(model_dir)
    sc = scenes({"image_size": SHAPES_RENDER_SIZE}, EVAL_SEED, n)
    pixels = preprocess([render(s) for s in sc], image_config(model.visual_encoder.config.image_size))
    truths = [caption(s) for s in sc]
    out = {}
    for name, kw in (strategies or STRATEGIES).items():
        caps = []
        for i in range(0, n, 50):
            caps += model.caption(pixels[i:i + 50], tok, max_new_tokens=max_new_tokens,
                                  **({"seed": seed + i} if kw.get("do_sample") else {}), **kw)
        out[name] = {**score(caps, truths), "example": caps[0]}
    return out


def table(results: dict[str, dict]) -> str:
    cols = ["BLEU-4", "CIDEr-D", "exact", "distinct-1", "distinct-2", "self-BLEU-4"]
    lines = ["| decoding | " + " | ".join(cols) + " | example |", "|---" * (len(cols) + 2) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {r['example']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ocellus.eval.decoding", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="an exported BLIP dir (e.g. runs/blip_tiny_shapes/model)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    strategies = {"greedy": {}, f"beam (k={args.beams})": {"num_beams": args.beams},
                  f"nucleus (p={args.top_p})": {"do_sample": True, "top_p": args.top_p}}
    print(table(compare(args.model, args.n, strategies, seed=args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["distinct_n", "self_bleu", "score", "compare", "table", "STRATEGIES"]
