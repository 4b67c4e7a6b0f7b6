"""Training and measuring the unified models (ocellus/models/unified) from a YAML recipe.

    ocellus train recipes/unified/emu3_shapes.yaml [key=value ...]

A recipe with `task: unified` trains one model in both directions on the same data: single shapes
(one palette colour, one of the five shapes, on white) captioned "colour shape". `model.tasks`
picks the directions ([t2i, i2t] = unified; one of them = the single-task baseline of the same size).
The image words come from a VQ-VAE trained beforehand (`model.tokenizer_from`, e.g. by
recipes/unified/vqvae_shapes.yaml; SEED-LLaMA reads the SEED codec of recipes/unified/seed_shapes.yaml).
At the end both directions are measured on held-out images:

    captioning   describe(image) == "colour shape": shape / colour / both accuracy
    drawing      generate(caption) judged by the shape classifier of eval/image_quality.py (trained
                 here on the training images) and by its dominant colour (the nearest palette colour
                 to the mean of its non-background pixels), plus the judge's Fréchet distance.

Numbers go to quality.json; a grid of drawn samples (one row per caption) to samples.png.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ocellus.errors import ConfigError
from ocellus.models.unified import PAD
from ocellus.train import schema
from ocellus.train.loader import BatchLoader
from ocellus.train.stages import parts_of
from ocellus.train.recipe import read_recipe
from ocellus.train.trainer import TrainConfig, Trainer
from ocellus.data.shapes import COLOURS, Obj, render, Scene, SHAPES
from ocellus.eval.image_quality import accuracy, judge_fd, train_judge
from ocellus.models.generative.checkpoint import load_generator
from ocellus.models.unified.checkpoint import build_model, save_unified, text_vocab
from ocellus.viz.image_grid import save_grid

log = logging.getLogger(__name__)

TASK = "unified"
TASKS = ("t2i", "i2t", "interleave")   # interleave: two (caption, image) pairs per row (SEED-LLaMA)
# train: the Trainer's keys (the defaults of every stage) + stages: [{name, max_steps, parts, ...}] (Janus' three)
TRAIN_KEYS = {**schema.TRAIN, "stages": schema.list_of(schema.MAPPING, name="a list of stage mappings")}


# -- data ---------------------------------------------------------------------------------------------

def caption_data(n: int, image_size: int, split: str, colours: list[str], seed: int = 0):
    """(images [N, 3, S, S] in [-1, 1], captions ["red circle", ...], shape ids [N], colour ids [N]).
    Sample i of a split is drawn from default_rng([seed, offset + i]): splits are disjoint."""
    unknown = [c for c in colours if c not in COLOURS]
    if unknown or not colours:
        raise ConfigError(f"data.colours must name palette colours {list(COLOURS)}, got {colours}")
    offset = {"train": 0, "test": 10 ** 6}[split]
    xs, caps, ks, cs = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, offset + i])
        k, c = int(rng.integers(len(SHAPES))), int(rng.integers(len(colours)))
        side = int(rng.integers(image_size // 2, image_size - 2))
        x0, y0 = (int(v) for v in rng.integers(1, image_size - side, size=2))
        img = render(Scene(image_size, "white", (Obj(SHAPES[k], colours[c], (x0, y0, x0 + side, y0 + side)),)))
        xs.append(torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1))   # [3, S, S]
        caps.append(f"{colours[c]} {SHAPES[k]}")
        ks.append(k)
        cs.append(c)
    return torch.stack(xs) / 127.5 - 1, caps, torch.tensor(ks), torch.tensor(cs)


def dominant_colour(images: torch.Tensor, colours: list[str], threshold: float = 0.3) -> torch.Tensor:
    """images [B, 3, S, S] in [-1, 1] -> index into `colours` of the palette colour nearest to the mean of
    the pixels that are not background (farther than `threshold` from white); -1 for a blank image."""
    palette = torch.tensor([COLOURS[c] for c in colours], dtype=torch.float32) / 127.5 - 1   # [K, 3]
    out = []
    for img in images:
        px = img.flatten(1).t()                                                        # [S*S, 3]
        ink = px[(1 - px).abs().max(1).values > threshold]
        out.append(-1 if len(ink) == 0 else int(torch.cdist(ink.mean(0, keepdim=True), palette).argmin()))
    return torch.tensor(out)


# -- rows ------------------------------------------------------------------------------------------------

def right_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (T - len(r)) for r in rows])


def token_rows(model, x: torch.Tensor, captions: list[str], tasks: list[str], p_uncond: float, seed: int):
    """Training rows: for every image and every task one (ids, labels) row; a share p_uncond of the
    t2i rows get an empty caption, so the model also learns the unconditional prompt CFG needs.
    Task 'interleave' pairs the image with a random other one: caption, image, caption, image."""
    codes = torch.cat([model.codes(chunk) for chunk in x.split(256)])                 # [N, h, w] or [N, Q]
    rng = np.random.default_rng(seed)
    rows = []
    for i, (c, cap) in enumerate(zip(codes, captions)):
        for task in tasks:
            if task == "interleave":
                j = int(rng.integers(len(codes)))
                rows.append(model.interleaved([(cap, c), (captions[j], codes[j])]) + (i,))
                continue
            drop = task == "t2i" and rng.random() < p_uncond
            rows.append(model.sequence(cap, c, task, uncond=drop) + (i,))
    return rows


def make_collate(x: torch.Tensor):
    """(ids, labels, image index) rows -> a right-padded batch; pixel_values ride along for models whose
    understanding path reads pixels (Janus' ViT), and are ignored by the others."""
    def collate(rows):
        ids = right_pad([r[0] for r in rows], PAD)
        return {"input_ids": ids, "attention_mask": right_pad([[1] * len(r[0]) for r in rows], 0),
                "labels": right_pad([r[1] for r in rows], -100),
                "pixel_values": x[torch.tensor([r[2] for r in rows])]}
    return collate


# -- measuring ------------------------------------------------------------------------------------------------

@torch.no_grad()
def measure(model, colours: list[str], image_size: int, judge, train_x: torch.Tensor, n_test: int = 200,
            n_per_caption: int = 4, gen: dict | None = None, seed: int = 0, tasks=("t2i", "i2t")) -> dict:
    model.eval()
    res = {}
    if "i2t" in tasks:
        x, caps, ks, cs = caption_data(n_test, image_size, "test", colours, seed)
        said = [s for chunk in x.split(100) for s in model.describe(chunk)]
        words = [s.split() for s in said]
        shape_ok = [len(w) == 2 and w[1] == SHAPES[k] for w, k in zip(words, ks.tolist())]
        colour_ok = [len(w) == 2 and w[0] == colours[c] for w, c in zip(words, cs.tolist())]
        res.update(caption_shape_acc=float(np.mean(shape_ok)), caption_colour_acc=float(np.mean(colour_ok)),
                   caption_acc=float(np.mean([a and b for a, b in zip(shape_ok, colour_ok)])),
                   caption_examples=list(zip(caps[:5], said[:5])))
    if "t2i" in tasks:
        gen = dict(gen or {})
        prompts = [f"{c} {s}" for c in colours for s in SHAPES for _ in range(n_per_caption)]
        shapes = torch.tensor([k for _ in colours for k in range(len(SHAPES)) for _ in range(n_per_caption)])
        cols = torch.tensor([c for c in range(len(colours)) for _ in SHAPES for _ in range(n_per_caption)])
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        images = torch.cat([model.generate_images(prompts[i:i + 100], generator=g, **gen)
                            for i in range(0, len(prompts), 100)])
        per_image = (time.perf_counter() - t0) / len(prompts)
        res.update(draw_shape_acc=accuracy(judge, images, shapes),
                   draw_colour_acc=(dominant_colour(images, colours) == cols).float().mean().item(),
                   draw_fd=judge_fd(judge, images, train_x[:len(images)]), seconds_per_image=per_image,
                   judge_acc_real=accuracy(judge, *caption_data(200, image_size, "test", colours, seed)[::2]))
        res["draw_acc"] = ((judge(images).argmax(-1) == shapes) & (dominant_colour(images, colours) == cols)
                           ).float().mean().item()
        res["_images"] = images
    return res


# -- the recipe ------------------------------------------------------------------------------------------------

def recipe_colours(data: dict) -> list[str]:
    return list(data.get("colours") or ["red", "green", "blue", "yellow"])


def export(recipe: dict, model, path) -> Path:
    """The trained model as `ocellus chat --model DIR` opens it: save_unified with the recipe's build spec (what
    load_unified builds again), its frozen tokenizer's spec, the caption words and the decoding defaults."""
    data = recipe.get("data") or {}
    spec = {k: v for k, v in recipe["model"].items() if k not in ("tokenizer_from", "tasks", "p_uncond")}
    return save_unified(model, spec, model.tokenizer.spec, recipe_colours(data), int(data.get("image_size", 16)),
                        path, (recipe.get("eval") or {}).get("generate") or {})


def load_unified_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """A unified-model recipe with its overrides applied and its top level checked."""
    return read_recipe(path, overrides, check_unified)


def check_unified(recipe: dict, where: str) -> None:
    schema.check_runner(recipe, where, TASK, TRAIN_KEYS)
    if "tokenizer_from" not in (recipe.get("model") or {}):
        raise ConfigError(f"{where}: model.tokenizer_from must name a trained image tokenizer directory "
                          f"(e.g. train recipes/unified/vqvae_shapes.yaml first; seed_llama reads the SEED codec "
                          f"of recipes/unified/seed_shapes.yaml)")


def run_unified(recipe: dict, where: str = "recipe") -> dict:
    check_unified(recipe, where)
    data, train, ev = dict(recipe.get("data") or {}), dict(recipe.get("train") or {}), dict(recipe.get("eval") or {})
    spec = dict(recipe.get("model") or {})
    seed = int(recipe.get("seed", 0))
    torch.manual_seed(seed)
    size, colours = int(data.get("image_size", 16)), recipe_colours(data)
    tokenizer = load_generator(spec.pop("tokenizer_from"))
    kinds = ("seed",) if spec.get("family") == "seed_llama" else ("vqvae", "vqgan")   # SEED codes or VQ grids
    if getattr(tokenizer, "spec", {}).get("kind") not in kinds:
        raise ConfigError(f"{where}: model.tokenizer_from is a {tokenizer.spec.get('kind')!r}, not one of {kinds} "
                          f"(what model.family {spec.get('family')!r} reads)")
    tasks = list(spec.pop("tasks", ["t2i", "i2t"]))
    if not tasks or set(tasks) - set(TASKS):
        raise ConfigError(f"{where}: model.tasks must be a non-empty subset of {list(TASKS)}, got {tasks}")
    p_uncond = float(spec.pop("p_uncond", 0.1))
    text = text_vocab(colours)
    model = build_model(spec, tokenizer, text, size)
    if "interleave" in tasks and not hasattr(model, "interleaved"):
        raise ConfigError(f"{where}: model.tasks 'interleave' needs a model that writes images as words "
                          f"(seed_llama), not {model.__class__.__name__}")
    x, caps, ks, _ = caption_data(int(data.get("n", 2000)), size, "train", colours, seed)
    rows = token_rows(model, x, caps, tasks, p_uncond, seed)
    batch = int(train.pop("batch_size", 32))
    # stages as data (Janus' three): each {name, max_steps, parts: {part: frozen|full}} runs its own Trainer
    stages = train.pop("stages", None) or [{"name": "train", "max_steps": train.pop("max_steps", 100)}]
    out = Path(train.pop("out_dir", f"runs/unified/{recipe.get('name', 'unified')}"))
    name = recipe.get("name", "unified")
    show = lambda r: log.info(f"[{name}] step {r['step']} loss {r['loss']:.4f}")
    t0, c0, history = time.perf_counter(), time.process_time(), []
    for i, stage in enumerate(stages):
        stage = dict(stage)
        sname = stage.pop("name", f"stage{i + 1}")
        # default: everything trains but the VQ tokenizer (its codes are the data)
        parts = stage.pop("parts", None) or {p: "full" for p in parts_of(model) if p != "tokenizer"}
        cfg = TrainConfig(**{"progress": False, "log_every": 50, **{k: (float(v) if k in ("lr", "weight_decay") else v)
                                                                       for k, v in {**train, **stage}.items()},
                             "stage": parts, "out_dir": str(out / sname)})
        trainer = Trainer(model, BatchLoader(rows, batch, make_collate(x), seed=seed + i), cfg, on_log=show)
        log.info(f"[{name}] {sname}: trainable parameters per part:\n{trainer.report}")
        trainer.fit()
        history += [dict(h, stage=sname) for h in trainer.history]
    results = {"family": model.__class__.__name__, "tasks": tasks, "steps": len(history),
               "train_seconds": time.perf_counter() - t0, "train_cpu_seconds": time.process_time() - c0,
               "parameters": sum(p.numel() for p in model.parameters())
               - sum(p.numel() for p in model.tokenizer.parameters()),
               "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"]}
    if ev.get("measure", True):
        judge = train_judge(x, ks, seed=seed)
        q = measure(model, colours, size, judge, x, int(ev.get("n_test", 200)), int(ev.get("n_per_caption", 4)),
                    ev.get("generate"), seed, tasks)
        images = q.pop("_images", None)
        results.update(q)
        if images is not None:
            save_grid(images, out / "samples.png", nrow=int(ev.get("n_per_caption", 4)) * 5)
    out.mkdir(parents=True, exist_ok=True)
    results["export"] = str(export(recipe, model, out / "model"))
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    log.info(f"[{name}] {json.dumps(results, indent=1)}")
    results["model"] = model
    return results
