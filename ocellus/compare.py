"""The three routes from pixels to a language model, measured side by side on the shapes world.

    python -m ocellus.compare [--families llava,blip2,...] [--steps 600] [--out docs/VLM_COMPARISON.md]

Every family gets the same pretrained parts (the tiny ViT and decoder of
recipes/llava_tiny_shapes' first two steps), the same data (single-turn QA mixed with grounding,
one seed), the same stage (vision frozen; connector and decoder trained), the same optimiser
settings and the same number of steps; only the bridge differs:
  compressed prompt   BLIP-2 (Q-Former queries), Qwen-VL (cross-attention resampler)
  all tokens          LLaVA (every patch), InternVL (pixel-shuffled patches), Qwen2-VL (merged
                      patches of a dynamic-resolution ViT, trained here from scratch: its tower has
                      no pretrained tiny checkpoint)
  cross-attention     Flamingo (Perceiver latents read by gated cross-attention layers)
Each trained model is evaluated with the harness (held-out scenes): shapes-vqa accuracy per
question type and shapes-grounding accuracy@IoU 0.5 and mean IoU; the table also gives the image
tokens each image puts into the decoder's sequence, wall-clock training time and parameters.

An experiment driver: it runs recipes through the tasks table (train/tasks/), as `ocellus train` does, then scores
them with eval/harness.py, so it sits above train/ and eval/, with the commands (as bench_vlm.py, which also trains).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from ocellus.data.processor import load_processor
from ocellus.errors import ConfigError
from ocellus.eval.harness import evaluate
from ocellus.hub.checkpoint import load_model
from ocellus.train.stages import parts_of
from ocellus.train.tasks import run_recipe, validate

ROUTES = {"llava": "all tokens", "blip2": "compressed prompt", "qwen_vl": "compressed prompt",
          "internvl": "all tokens", "qwen2_vl": "all tokens", "flamingo": "cross-attention",
          # families compared only in their shipped recipes (scripts/compare_bridges.py), not trained here
          "llava_next": "all tokens", "minigpt4": "compressed prompt", "qwen2_5_vl": "all tokens"}

# What each family's bridge looks like at tiny scale: keys of its `compose` spec, and "pretrained_vit":
# False for Qwen2-VL, whose native-resolution tower (2D RoPE) is new and trains with the rest.
FAMILY_SPECS: dict[str, dict] = {
    "llava": {"connector": {"depth": 2}, "feature_layer": -1, "feature_select": "full"},
    "blip2": {"qformer": {"num_query_tokens": 16, "hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "intermediate_size": 192, "cross_attention_frequency": 1, "max_position_embeddings": 96}},
    "qwen_vl": {"feature_layer": -1, "resampler": {"num_queries": 16, "num_heads": 4}},
    "internvl": {"feature_layer": -1, "downsample_ratio": 0.5, "max_tiles": 1},
    "qwen2_vl": {"pretrained_vit": False,
                 "config": {"vision_config": {"depth": 4, "embed_dim": 96, "num_heads": 4, "mlp_ratio": 2,
                                              "patch_size": 6, "spatial_merge_size": 2},
                            "mrope_section": [4, 2, 2]}},
    "flamingo": {"feature_layer": -1, "feature_select": "full",
                 "perceiver": {"depth": 2, "num_latents": 16, "heads": 4, "head_dim": 24},
                 "cross_attn": {"every_n_layers": 1, "heads": 4, "head_dim": 32, "ff_mult": 2}},
}


def recipe_for(family: str, parts_dir: Path, out_dir: Path, steps: int, batch_size: int, seed: int = 0,
               lr: float = 2.0e-3) -> dict:
    """The one recipe every family trains with; only model.architecture and its connector differ."""
    if family not in FAMILY_SPECS:
        raise ConfigError(f"unknown family {family!r}; choose from {', '.join(FAMILY_SPECS)}")
    spec = dict(FAMILY_SPECS[family])
    pretrained_vit = spec.pop("pretrained_vit", True)
    model = {"architecture": family, "llm_from": str(parts_dir / "text" / "model"), **spec}
    if pretrained_vit:
        model["vision_from"] = str(parts_dir / "vit" / "model")
    return {
        "name": f"compare_{family}", "task": "vlm", "seed": seed,
        "tokenizer": {"from": str(parts_dir / "text" / "model")},
        "model": model,
        "data": {"source": "shapes", "kind": "mixed", "kind_weights": {"qa": 3, "grounding": 1},
                 "n": 100_000, "seed": 4, "image_size": 48, "max_length": 256, "hard_negatives": 0.7},
        "train": {"max_steps": steps, "batch_size": batch_size, "lr": lr, "warmup_steps": 30,
                  "out_dir": str(out_dir), "log_every": 50, "progress": False,
                  "stage": {"vision": "frozen" if pretrained_vit else "full", "connector": "full", "llm": "full"}},
    }


def _sizes(model) -> tuple[int, int]:
    """(all parameters, parameters of the bridge = everything outside the vision tower and decoder)."""
    parts = parts_of(model)
    total = sum(p.numel() for p in model.parameters())
    bridge = sum(p.numel() for p in parts["connector"].parameters()) if "connector" in parts else 0
    return total, bridge


def decoder_image_tokens(model, processor, image: Image.Image) -> tuple[int, int]:
    """(image tokens the processor puts into the decoder's sequence for one image, visual slots the decoder reads:
    the same number, except for cross-attention (Flamingo), whose Perceiver latents sit outside the sequence)."""
    _, counts = processor.image_inputs([image])
    perceiver = getattr(model, "perceiver", None)
    return counts[0], perceiver.config.num_latents if perceiver is not None else counts[0]


def run_family(family: str, parts_dir: Path, runs_dir: Path, steps: int, batch_size: int, n_eval: int,
               lr: float = 2.0e-3) -> dict:
    recipe = recipe_for(family, parts_dir, runs_dir / family, steps, batch_size, lr=lr)
    validate(recipe, where=f"compare {family}")
    start = time.perf_counter()
    path = run_recipe(recipe)
    seconds = time.perf_counter() - start
    model, proc = load_model(path), load_processor(path)
    model.eval()
    tokens, slots = decoder_image_tokens(model, proc, Image.new("RGB", (48, 48)))
    total, bridge = _sizes(model)
    vqa = evaluate(path, "shapes-vqa", n=n_eval, model=model, processor=proc, printer=lambda *_: None)
    grounding = evaluate(path, "shapes-grounding", n=max(50, n_eval // 3), model=model, processor=proc,
                         printer=lambda *_: None)
    return {"family": family, "route": ROUTES[family], "image_tokens": tokens, "visual_slots": slots,
            "train_s": round(seconds, 1),
            "params": total, "bridge_params": bridge,
            "vqa": {k: v[1] for k, v in vqa["table"].items()}, "vqa_n": vqa["n"],
            "grounding": {k: v[1] for k, v in grounding["table"].items()},
            "grounding_miou": grounding.get("mean_iou")}


def table(results: list[dict]) -> str:
    types = sorted({t for r in results for t in r["vqa"]} - {"all"}) + ["all"]
    head = ["family", "route", "image tokens in sequence", "visual slots", *[f"VQA {t}" for t in types], "grounding acc@0.5", "mean IoU",
            "train s", "params", "bridge params"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["family"], r["route"], str(r["image_tokens"]), str(r["visual_slots"]),
                 *[f"{100 * r['vqa'][t]:.1f}" if t in r["vqa"] else "-" for t in types],
                 f"{100 * r['grounding'].get('all', 0.0):.1f}",
                 f"{r['grounding_miou']:.3f}" if r["grounding_miou"] is not None else "-",
                 f"{r['train_s']:.0f}", f"{r['params']:,}", f"{r['bridge_params']:,}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILY_SPECS))
    p.add_argument("--parts", default="runs/llava_tiny_shapes", help="dir holding text/model and vit/model")
    p.add_argument("--runs", default="runs/compare")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-eval", type=int, default=300)
    p.add_argument("--lr", type=float, default=2.0e-3, help="the one learning rate every family trains at")
    p.add_argument("--out", default=None, help="write the table (markdown) here; results JSON next to it")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = []
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        results.append(run_family(family, Path(args.parts), Path(args.runs), args.steps, args.batch_size,
                                  args.n_eval, lr=args.lr))
        print(table(results[-1:]), flush=True)
        if args.out:  # after every family, so a long run's finished rows survive an interruption
            Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
            Path(args.out).write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
