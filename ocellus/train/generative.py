"""Training and judging the image generators of ocellus/models/generative from a YAML recipe.

    ocellus train recipes/generation/ddpm_digits.yaml [key=value ...]

A recipe with `task: image_generation` names the data (scikit-learn digits or single generated
shapes, as tensors in [-1, 1]), the model spec (models/generative/checkpoint.py `build`; a
generator over VQ tokens or latents names its trained tokenizer with `tokenizer_from` /
`autoencoder_from`), the training numbers (the shared Trainer: AdamW, cosine schedule, clipping,
checkpoints) and what to measure at the end. A sample grid (one row per class) is written every
`sample_every` steps; the export is a self-contained directory `ocellus generate-image` reads, and
`quality.json` holds the measured numbers: classifier accuracy and Fréchet distance of generated
samples under a judge trained here on the training split, time per image, and for tokenizers the
reconstruction PSNR / SSIM and codebook usage on held-out images. A text-to-image diffusion model
(`text_encoder_from`: a CLIP export whose text tower and tokenizer condition it) trains on the shapes'
captions ("A red circle.") and is measured by whether its samples have the asked colour and shape
(`measure_text`, one number per guidance scale, 0 = the unconditional baseline).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ocellus.errors import ConfigError
from ocellus.models.generative.checkpoint import build, clip_text_encoder, load_generator, save_generator
from ocellus.models.generative.sampling import sample_images
from ocellus.train import schema
from ocellus.train.loader import BatchLoader
from ocellus.train.recipe import read_recipe
from ocellus.train.trainer import TrainConfig, Trainer
from ocellus.data.digits import _load_digits, split_indices
from ocellus.data.shapes import caption, COLOURS, Obj, render, Scene, SHAPES
from ocellus.eval.image_quality import accuracy, dominant_colour, judge_fd, psnr, ssim, train_judge
from ocellus.models.generative.vqgan import adaptive_weight, FeatureLoss, gan_factor, hinge_d_loss, hinge_g_loss, PatchDiscriminator
from ocellus.viz.curves import plot_curve
from ocellus.viz.image_grid import save_grid

log = logging.getLogger(__name__)

TASK = "image_generation"
SOURCES = ("digits", "shapes")
# train: the Trainer's keys, plus sample grids every N steps and (VQGAN) when the discriminator starts and weighs in
TRAIN_KEYS = {**schema.TRAIN, "sample_every": schema.INT, "disc_start": schema.INT, "disc_weight": schema.FLOAT,
              "feature_weight": schema.FLOAT}
DIGIT_CLASSES = [str(i) for i in range(10)]


# -- data -----------------------------------------------------------------------------------------

def image_data(source: str, split: str, image_size: int, n: int | None = None, seed: int = 0):
    """(images [N, C, S, S] in [-1, 1], labels [N], class names). digits: grey, ink bright (+1) on
    dark; shapes: RGB, one shape of a random palette colour on white, labelled by its shape."""
    if source == "digits":
        from PIL import Image
        images, targets = _load_digits()
        idx = split_indices(len(images), split, seed, 0.2)[:n]
        x = torch.tensor(np.stack([np.asarray(Image.fromarray((images[i] * 255 / 16).astype(np.uint8)).resize(
            (image_size, image_size), Image.Resampling.BILINEAR)) for i in idx]), dtype=torch.float32)
        return (x / 127.5 - 1)[:, None], torch.tensor(targets[idx], dtype=torch.long), list(DIGIT_CLASSES)
    if source == "shapes":
        scenes = shape_scenes(split, image_size, n, seed)
        xs = [torch.tensor(np.asarray(render(sc)), dtype=torch.float32).permute(2, 0, 1) for sc in scenes]  # [3, S, S]
        return torch.stack(xs) / 127.5 - 1, torch.tensor([SHAPES.index(sc.objects[0].shape) for sc in scenes]), \
            list(SHAPES)
    raise ConfigError(f"data.source must be one of {SOURCES}, got {source!r}")


def shape_scenes(split: str, image_size: int, n: int | None = None, seed: int = 0) -> list[Scene]:
    """The single-shape scenes of image_data("shapes"): one shape of a random palette colour on white."""
    offset = 0 if split == "train" else 10 ** 6    # disjoint seeds per split
    scenes = []
    for i in range(n or 2000):
        rng = np.random.default_rng([seed, offset + i])
        k, colour = int(rng.integers(len(SHAPES))), list(COLOURS)[int(rng.integers(len(COLOURS)))]
        side = int(rng.integers(image_size // 2, image_size - 2))
        x0, y0 = (int(v) for v in rng.integers(1, image_size - side, size=2))
        scenes.append(Scene(image_size, "white", (Obj(SHAPES[k], colour, (x0, y0, x0 + side, y0 + side)),)))
    return scenes


def _collate(rows):
    return {"pixel_values": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}


def _collate_captions(rows):
    """(pixels, ids [T], mask [T]) rows -> a text-to-image batch (captions tokenized once, up front)."""
    return {"pixel_values": torch.stack([r[0] for r in rows]), "input_ids": torch.stack([r[1] for r in rows]),
            "attention_mask": torch.stack([r[2] for r in rows])}


def shape_prompts(colours=None, shapes=SHAPES) -> list[str]:
    """Captions "A red circle." of every (colour, shape), as data/shapes.caption writes a one-object scene."""
    return [caption(Scene(16, "white", (Obj(s, c, (1, 1, 9, 9)),))) for c in (colours or COLOURS) for s in shapes]


# -- model ------------------------------------------------------------------------------------------

def build_from_recipe(spec: dict, classes: list[str], image_size: int) -> torch.nn.Module:
    """The recipe's model: parts named by `tokenizer_from` / `autoencoder_from` (a trained VQ-VAE directory) and
    `text_encoder_from` (a CLIP export: its text tower and tokenizer) are built from their spec and loaded."""
    spec = dict(spec, class_names=classes, image_size=image_size)
    text = None
    if "text_encoder_from" in spec:   # text-to-image: captions, not class names, condition it
        text, tok = clip_text_encoder(spec.pop("text_encoder_from"))
        spec["text_encoder"] = text.config.to_hf()
        del spec["class_names"]
    sources = {field: load_generator(path) for key, field in (("tokenizer_from", "tokenizer"),
                                                                ("autoencoder_from", "autoencoder"))
               if (path := spec.pop(key, None)) is not None}   # autoencoder_from=null: pixel space
    spec.update({field: src.spec for field, src in sources.items()})
    model = build(spec)
    for field, src in sources.items():
        getattr(model, field).load_state_dict(src.state_dict())
    if text is not None:
        model.conditioner.text_model.load_state_dict(text.state_dict())
        model.conditioner.tokenizer = tok
    return model


# -- measuring ----------------------------------------------------------------------------------------

def measure(model, source: str, image_size: int, gen: dict, n_per_class: int = 20, judge=None, seed: int = 0) -> dict:
    """Quality numbers of a trained generator or tokenizer on the held-out split."""
    test_x, test_y, classes = image_data(source, "test", image_size, n=400 if source == "digits" else 500, seed=seed)
    kind = model.spec["kind"]
    model.eval()
    if kind in ("vqvae", "vqgan"):
        with torch.no_grad():
            out = model(test_x)
        res = {"psnr_db": psnr(out.recon, test_x).mean().item(), "codebook_usage": out.quant.usage.item(),
               "perplexity": out.quant.perplexity.item()}
        if image_size >= 11:
            res["ssim"] = ssim(out.recon, test_x).mean().item()
        return res
    if judge is None:
        train_x, train_y, _ = image_data(source, "train", image_size, seed=seed)
        judge = train_judge(train_x, train_y)
    labels = torch.arange(len(classes)).repeat_interleave(n_per_class)
    t0, c0 = time.perf_counter(), time.process_time()
    images = torch.cat([sample_images(model, chunk, gen, seed + i) for i, chunk in enumerate(labels.split(100))])
    per_image, cpu_per_image = (time.perf_counter() - t0) / len(labels), (time.process_time() - c0) / len(labels)
    return {"accuracy": accuracy(judge, images, labels), "fd": judge_fd(judge, images, test_x),
            "judge_accuracy_real": accuracy(judge, test_x, test_y), "seconds_per_image": per_image,
            "cpu_seconds_per_image": cpu_per_image,
            "n": len(labels), **{k: v for k, v in gen.items()}}


def measure_text(model, image_size: int, gen: dict, n_per_prompt: int = 5, judge=None, seed: int = 0) -> dict:
    """Does a text-to-image model draw what its caption asks? n samples for each (colour, shape) prompt
    ("A red circle."): the share whose foreground colour is the asked one (eval/image_quality.dominant_colour)
    and whose shape the judge (a classifier trained on real shapes) calls the asked one; chance is 1/8 and 1/5.
    The same two numbers on held-out real images say how far the measures themselves can be trusted."""
    test = shape_scenes("test", image_size, 500, seed)
    test_x, test_y, _ = image_data("shapes", "test", image_size, 500, seed)
    if judge is None:
        train_x, train_y, _ = image_data("shapes", "train", image_size, seed=seed)
        judge = train_judge(train_x, train_y)
    prompts = [p for p in shape_prompts() for _ in range(n_per_prompt)]
    asked = [(c, s) for c in COLOURS for s in SHAPES for _ in range(n_per_prompt)]
    t0, c0 = time.perf_counter(), time.process_time()
    images = torch.cat([sample_images(model, prompts[i:i + 100], gen, seed + i) for i in range(0, len(prompts), 100)])
    per_image, cpu_per_image = (time.perf_counter() - t0) / len(prompts), (time.process_time() - c0) / len(prompts)
    drawn = dominant_colour(images, COLOURS)
    return {"colour_accuracy": float(np.mean([d == c for d, (c, _) in zip(drawn, asked)])),
            "shape_accuracy": accuracy(judge, images, torch.tensor([SHAPES.index(s) for _, s in asked])),
            "no_foreground": float(np.mean([d is None for d in drawn])),
            "colour_accuracy_real": float(np.mean([d == sc.objects[0].colour
                                                   for d, sc in zip(dominant_colour(test_x, COLOURS), test)])),
            "judge_accuracy_real": accuracy(judge, test_x, test_y), "seconds_per_image": per_image,
            "cpu_seconds_per_image": cpu_per_image, "n": len(prompts), **gen}


# -- the recipe -----------------------------------------------------------------------------------------

def load_generative_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """An image-generation recipe with its overrides applied and its top level checked."""
    return read_recipe(path, overrides, check_generative_recipe)


def check_generative_recipe(recipe: dict, where: str) -> None:
    """The top level, the train section's types, the model mapping and data.source, before anything is built."""
    schema.check_runner(recipe, where, TASK, TRAIN_KEYS)
    if not isinstance(recipe.get("model"), dict):
        raise ConfigError(f"{where}: model must be a mapping")
    source = (recipe.get("data") or {}).get("source", "digits")
    if source not in SOURCES:
        raise ConfigError(f"{where}: data.source must be one of {SOURCES}, got {source!r}")


def run_generative_recipe(path: str | Path, overrides: list[str] = ()) -> Path:
    return run_generative(load_generative_recipe(path, overrides))


def run_generative(recipe: dict) -> Path:
    """Train a checked image-generation recipe -> its export dir (quality.json and sample grids beside it)."""
    data, train = dict(recipe.get("data") or {}), dict(recipe.get("train") or {})
    seed = int(recipe.get("seed", 0))
    torch.manual_seed(seed)
    size = int(data.get("image_size", 16))
    x, y, classes = image_data(data.get("source", "digits"), "train", size, data.get("n"), seed)
    model = build_from_recipe(dict(recipe["model"]), classes, size)
    text = "text_encoder" in model.spec   # text-to-image: trained on the shapes' captions
    if text and data.get("source", "digits") != "shapes":
        raise ConfigError(f"a text-conditioned generator (model.text_encoder_from) trains on captions: data.source "
                          f"must be 'shapes' (digits have none), got {data.get('source', 'digits')!r}")
    if model.spec["kind"] == "diffusion" and model.autoencoder is not None:
        log.info(f"[{recipe.get('name')}] latent scale {model.fit_latent_scale(x[:512]):.4f}")
    if model.spec["kind"] == "vqgan":
        return _run_vqgan(recipe, model, x, y, train, seed)
    sample_every = int(train.pop("sample_every", 0))
    batch = int(train.pop("batch_size", 64))
    cfg = TrainConfig(**{"progress": False, "log_every": 50, **{k: (float(v) if k in ("lr", "weight_decay") else v)
                                                                   for k, v in train.items()}})
    out = Path(cfg.out_dir)
    gen = dict((recipe.get("eval") or {}).get("generate") or {})
    grid_labels = torch.arange(len(classes)).repeat_interleave(8)
    if text:   # a row per colour, the shapes in turn
        grid_labels = [p for i, p in enumerate(shape_prompts()) if i % len(SHAPES) == i // len(SHAPES) % len(SHAPES)
                       for _ in range(8)]

    def on_log(record):
        log.info(f"[{recipe.get('name')}] step {record['step']} loss {record['loss']:.4f}")
        if sample_every and record["step"] % sample_every == 0:
            _write_grid(trainer.model, grid_labels, gen, out / "samples" / f"step{record['step']:06d}.png")
            trainer.model.train()

    dataset, collate = list(zip(x, y)), _collate
    if text:
        ids, mask = model.conditioner.tokenize([caption(sc) for sc in shape_scenes("train", size, data.get("n"), seed)])
        dataset, collate = list(zip(x, ids, mask)), _collate_captions
    trainer = Trainer(model, BatchLoader(dataset, batch, collate, seed=seed), cfg, on_log=on_log)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit()
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    export = save_generator(model, out / "model")
    _write_grid(model, grid_labels, gen, out / "samples" / "final.png")
    plot_curve(trainer.history, out / "curve.png", title=recipe.get("name", ""))
    ev = recipe.get("eval") or {}
    results = {"train_seconds": train_s, "train_cpu_seconds": train_cpu, "steps": cfg.max_steps}
    if ev.get("measure", True):
        sweep = ev.get("guidance_scales") or [gen.get("guidance_scale", 1.0)]
        if text:
            judge = train_judge(x, y, seed=seed)
            results["sweep"] = [measure_text(model, size, {**gen, "guidance_scale": s}, int(ev.get("n_per_prompt", 5)),
                                             judge, seed) for s in sweep]
        elif model.spec["kind"] not in ("vqvae", "vqgan"):
            judge = train_judge(x, y, seed=seed)
            results["sweep"] = [measure(model, data.get("source", "digits"), size, {**gen, "guidance_scale": s},
                                        int(ev.get("n_per_class", 20)), judge, seed)
                                for s in (sweep if model.spec["kind"] != "ar" else [1.0])]
        else:
            results.update(measure(model, data.get("source", "digits"), size, gen, seed=seed))
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    log.info(f"[{recipe.get('name')}] exported {export}\n{json.dumps(results, indent=1)}")
    return export


def train_vqgan(model, x: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 1e-3, disc_start: int = 0,
                disc_weight: float = 0.5, feature_weight: float = 0.0, judge=None, seed: int = 0,
                log=None) -> list[dict]:
    """VQGAN's two-player loop (taming's VQLPIPSWithDiscriminator: autoencoder step, then discriminator
    step, GAN terms from disc_start on, Adam betas (0.5, 0.9))."""
    disc = PatchDiscriminator(model.cfg.in_channels)
    feat = FeatureLoss(judge) if judge is not None and feature_weight else None
    opt_ae = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    last = model.decoder[-1].weight
    g = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for step in range(steps):
        xb = x[torch.randint(0, len(x), (batch_size,), generator=g)]
        out = model(xb)
        rec = (out.recon - xb).abs().mean() + out.recon_loss
        if feat is not None:
            rec = rec + feature_weight * feat(out.recon, xb)
        on = gan_factor(step, disc_start)
        weight, g_loss = torch.zeros(()), torch.zeros(())
        if on:
            g_loss = hinge_g_loss(disc(out.recon))
            weight = adaptive_weight(rec, g_loss, last, disc_weight)
        loss = rec + out.quant.loss + weight * g_loss
        opt_ae.zero_grad()
        loss.backward()
        opt_ae.step()
        d_loss = torch.zeros(())
        if on:
            d_loss = hinge_d_loss(disc(xb), disc(out.recon.detach()))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
        rec_item = rec.item()
        history.append({"step": step + 1, "loss": loss.item(), "rec": rec_item, "d_loss": d_loss.item(),
                        "adaptive_weight": weight.item()})
        if log is not None:
            log(history[-1])
    model.eval()
    return history


def _run_vqgan(recipe, model, x, y, train, seed) -> Path:
    out = Path(train.get("out_dir", "runs/generation/vqgan"))
    judge = None
    if float(train.get("feature_weight", 0)):
        judge = train_judge(x, y, seed=seed)
    every = int(train.get("log_every", 100))
    show = lambda r: log.info(f"[{recipe.get('name')}] step {r['step']} rec {r['rec']:.4f} d {r['d_loss']:.3f} "
                              f"lambda {r['adaptive_weight']:.3f}") if r["step"] % every == 0 else None
    t0, c0 = time.perf_counter(), time.process_time()
    history = train_vqgan(model, x, int(train.get("max_steps", 1000)), int(train.get("batch_size", 64)),
                          float(train.get("lr", 1e-3)), int(train.get("disc_start", 0)),
                          float(train.get("disc_weight", 0.5)), float(train.get("feature_weight", 0.0)), judge, seed, show)
    results = {"train_seconds": time.perf_counter() - t0, "train_cpu_seconds": time.process_time() - c0,
               "steps": len(history)}
    export = save_generator(model, out / "model")
    plot_curve(history, out / "curve.png", title=recipe.get("name", ""))
    if (recipe.get("eval") or {}).get("measure", True):
        results.update(measure(model, (recipe.get("data") or {}).get("source", "digits"),
                               int((recipe.get("data") or {}).get("image_size", 16)), {}, seed=seed))
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    log.info(f"[{recipe.get('name')}] exported {export}\n{json.dumps(results, indent=1)}")
    return export


def _write_grid(model, labels, gen, path: Path) -> None:
    if model.spec["kind"] in ("vqvae", "vqgan"):
        return
    save_grid(sample_images(model, labels, gen), path, nrow=8)
