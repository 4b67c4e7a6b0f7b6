#!/usr/bin/env python
"""Where do a Qwen-VL resampler's queries look? On held-out shapes scenes: the cross-attention weights of every
query over the patch keys (averaged over heads), their entropy against uniform, the largest weight, and how often
a query's argmax is its own grid cell (docs/VLM_COMPARISON.md, session 10).

    python scripts/probe_resampler.py MODEL_DIR [--n 64]
"""
from __future__ import annotations

import argparse
import math

import torch

import ocellus
from ocellus.data.image import preprocess
from ocellus.eval.harness import task_samples


def attention_weights(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[N, Q, P] the resampler's attention weights (mean over heads) for these images."""
    attn, grabbed = model.multi_modal_projector.attn, {}
    plain = attn.forward

    def keep(q, k, v, need_weights=False, **kw):
        out, w = plain(q, k, v, need_weights=True, average_attn_weights=True, **kw)
        grabbed["w"] = w
        return out, w

    attn.forward = keep
    try:
        with torch.no_grad():
            model.image_features(pixel_values)
    finally:
        attn.forward = plain
    return grabbed["w"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args(argv)
    model, processor = ocellus.load(args.model).eval(), ocellus.load_processor(args.model)
    size = (processor.image_config.crop_size or processor.image_config.size_hw)[0]
    images = [s["images"][0] for s in task_samples("shapes-vqa", args.n, size)]
    w = attention_weights(model, preprocess(images, processor.image_config))        # [N, Q, P]
    q = w.shape[1]
    entropy = -(w.clamp_min(1e-9).log() * w).sum(-1).mean()
    own = (w.argmax(-1) == torch.arange(q)).float().mean() if w.shape[1] == w.shape[2] else float("nan")
    print(f"{args.n} scenes, {q} queries x {w.shape[2]} keys: entropy {entropy:.3f} nats (uniform "
          f"{math.log(w.shape[2]):.3f}), largest weight {w.max(-1).values.mean():.3f}, argmax on its own cell "
          f"{own:.3f} (chance {1 / w.shape[2]:.3f})")


if __name__ == "__main__":
    main()
