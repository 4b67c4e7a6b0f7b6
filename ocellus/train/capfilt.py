"""CapFilt: bootstrap a cleaner image-text dataset with a captioner and a filter (BLIP, sec. 3.3, fig. 3).

    1. pretrain BLIP on the noisy web pairs + a small clean set               -> model_noisy
    2. fine-tune two copies on the clean set: the captioner on LM (image-grounded decoder) and the
       filter on ITC + ITM (image-grounded encoder)
    3. the captioner writes one synthetic caption per web image by nucleus sampling (top-p 0.9)
    4. the filter keeps a web text, original or synthetic, when ITM says P(match) > threshold
    5. write the bootstrapped dataset (LLaVA JSON: clean + kept web + kept synthetic pairs)
    6. pretrain a new BLIP on it                                              -> model_bootstrapped

The shapes world makes every step measurable: the "web" captions are corrupted on purpose (a share
`noise` of them describe another scene: a colour, a shape or the object count changed) and the true
caption of every image is known, so the noise rate before and after filtering, and how often the
captioner is right, are counted, not estimated; the two pretrained models are compared on held-out
image-text retrieval (ocellus/eval/retrieval.py). Every stage is an ordinary BLIP recipe
(train/albef_blip_run.py: task blip's hooks) run by run.run_trainer.

    python -m ocellus.train.capfilt recipes/blip_tiny_shapes/capfilt.yaml [key=value ...]

Config (YAML): base (the BLIP pretraining recipe), base_overrides (its key=value overrides), out_dir,
clean {n, seed}, web {n, seed, noise},
pretrain {max_steps, batch_size, ...: train overrides}, finetune {max_steps, lr, ...},
caption {top_p, max_new_tokens, batch_size}, filter {threshold}, eval {n}, resume (skip stages whose
exported model exists), clean_baseline (also pretrain on the clean pairs alone, for comparison).
Results: <out_dir>/capfilt.json and the printed table; docs/CAPFILT.md holds a measured run.
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from ocellus.data.image import image_config, preprocess
from ocellus.data.messages import to_llava
from ocellus.data.shapes import caption, COLOURS, Obj, render, SHAPES
from ocellus.data.shapes_pairs import same_caption, scenes
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError, InputError
from ocellus.eval.retrieval import evaluate
from ocellus.hub.checkpoint import load_model
from ocellus.models.contrastive.albef import encode_captions
from ocellus.train import albef_blip_run
from ocellus.train.recipe import apply_overrides, read_recipe
from ocellus.train.run import run_trainer

PROMPT = "Give a short caption of the image."
CORRUPTIONS = ("colour", "shape", "count")
CONFIG_KEYS = {"base", "base_overrides", "out_dir", "clean", "web", "pretrain", "finetune", "caption", "filter", "eval",
               "resume", "clean_baseline"}


# ---- the noisy web --------------------------------------------------------------------------------
def corrupt(scene, rng: np.random.Generator):
    """A scene that differs from `scene` in one object's colour, one object's shape, or the number of
    objects (one dropped, or one added), so its caption is a plausible but wrong description."""
    objects = list(scene.objects)
    taken = {(o.colour, o.shape) for o in objects}
    kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
    if kind == "count":
        if len(objects) > 1 and rng.random() < 0.5:
            objects.pop(int(rng.integers(len(objects))))
        else:
            free = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in taken]
            c, s = free[int(rng.integers(len(free)))]
            x = int(rng.integers(scene.image_size))
            objects.append(Obj(s, c, (x, 0, x + 1, 1)))   # only its position in the left-to-right order matters
    else:
        i = int(rng.integers(len(objects)))
        o = objects[i]
        options = [(c, o.shape) for c in COLOURS if c != o.colour] if kind == "colour" else \
            [(o.colour, s) for s in SHAPES if s != o.shape]
        options = [p for p in options if p not in taken]
        c, s = options[int(rng.integers(len(options)))]
        objects[i] = Obj(s, c, o.bbox)
    return replace(scene, objects=tuple(objects))


def write_pairs(out_dir: Path, rows: list[dict]) -> Path:
    """rows {id, image (PIL), caption, truth, source} -> out_dir/images/*.png, data.json (LLaVA
    format: a caption request and the caption as the answer) and meta.jsonl (ground truth)."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    with open(out_dir / "meta.jsonl", "w", encoding="utf-8") as meta:
        for r in rows:
            rel = f"images/{r['image_file']}"
            if not (out_dir / rel).exists():
                r["image"].save(out_dir / rel, format="PNG")
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + PROMPT}]},
                        {"role": "assistant", "content": [{"type": "text", "text": r["caption"]}]}]
            records.append(to_llava(messages, [rel], id=r["id"]))
            meta.write(json.dumps({"id": r["id"], "source": r["source"], "caption": r["caption"],
                                   "truth": r["truth"], "correct": same_caption(r["caption"], r["truth"])}) + "\n")
    path = out_dir / "data.json"
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def noise_rate(rows: list[dict]) -> float:
    return sum(not same_caption(r["caption"], r["truth"]) for r in rows) / max(1, len(rows))


# ---- the stages -----------------------------------------------------------------------------------
def train_stage(base: dict, out: Path, data_path: Path, train: dict, model: dict | None = None,
                tokenizer=None, evaluate_n: int | None = None, resume: bool = False) -> Path:
    """One BLIP recipe run on a LLaVA-JSON pair file; returns the exported model dir. resume: a stage
    whose exported model exists is not run again."""
    if resume and (out / "model" / "config.json").is_file():
        return out / "model"
    recipe = copy.deepcopy(base)
    recipe["data"] = {"source": "llava_json", "path": str(data_path), "n": 10 ** 9}
    recipe["train"] = {**recipe.get("train", {}), **train, "out_dir": str(out), "progress": False}
    if model is not None:
        recipe["model"] = model
    if tokenizer is not None:
        recipe["tokenizer"] = str(tokenizer)
    recipe["eval"] = {"n": evaluate_n} if evaluate_n else None
    recipe["name"] = f"{base.get('name', 'blip')}:{out.name}"
    albef_blip_run.validate(recipe, where=f"capfilt stage {out.name}")
    return run_trainer(recipe, albef_blip_run)


@torch.no_grad()
def caption_images(model, tok, images: list, top_p: float, max_new_tokens: int, batch_size: int,
                   seed: int) -> list[str]:
    icfg = image_config(model.visual_encoder.config.image_size)
    out = []
    for i in range(0, len(images), batch_size):
        px = preprocess(images[i:i + batch_size], icfg)
        out += model.caption(px, tok, max_new_tokens=max_new_tokens, do_sample=True, top_p=top_p, seed=seed + i)
    return out


@torch.no_grad()
def itm_filter(model, tok, images: list, captions: list[str], batch_size: int) -> list[float | None]:
    """P(match) of each (image, caption) pair from the filter's ITM head; None for a text the text
    encoder cannot take (empty, or more tokens than its positions: a sampled caption can decode to
    bytes that re-tokenise longer). The caller rejects those and counts them."""
    icfg = image_config(model.visual_encoder.config.image_size)
    limit = model.text_encoder.config.max_position_embeddings
    fits = [bool(c) and len(tok.encode(c, add_special_tokens=False)) + 2 <= limit for c in captions]
    scores: list[float | None] = [None] * len(captions)
    todo = [i for i, ok in enumerate(fits) if ok]
    for j in range(0, len(todo), batch_size):
        idx = todo[j:j + batch_size]
        enc = encode_captions([captions[i] for i in idx], tok, model.config, limit)
        for i, p in zip(idx, model.itm_scores(preprocess([images[i] for i in idx], icfg), **enc).tolist()):
            scores[i] = p
    return scores


def check_config(config: dict) -> dict:
    """A CapFilt config's keys and its base recipe (loaded, validated, a BLIP pretraining one) -> the base."""
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ConfigError(f"capfilt config: unknown keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    if "base" not in config:
        raise ConfigError("capfilt config needs `base`: the BLIP pretraining recipe it starts from")
    path = Path(config["base"])
    base = read_recipe(path, list(config.get("base_overrides") or ()))
    base.setdefault("name", path.stem)
    if base.get("task") != "blip":
        raise ConfigError(f"capfilt's base recipe must be a BLIP pretraining recipe (task: blip), got "
                          f"{base.get('task')!r}")
    albef_blip_run.validate(base, where=str(path))
    return base


def run_capfilt(config: dict, printer=print) -> dict:
    base = check_config(config)
    out = Path(config.get("out_dir", "runs/capfilt"))
    web, clean = config.get("web") or {}, config.get("clean") or {}
    noise = float(web.get("noise", 0.4))
    if not 0.0 <= noise < 1.0:
        raise ConfigError(f"web.noise must be in [0, 1), got {noise}")
    shapes_data = {k: base["data"][k] for k in ("image_size", "min_objects", "max_objects") if k in base["data"]}
    rng = np.random.default_rng(int(web.get("seed", 1)))

    # the data: a small clean set (COCO's role) and a larger noisy web set
    clean_rows = [{"id": f"clean-{i}", "image": render(s), "image_file": f"clean-{i}.png", "caption": caption(s),
                   "truth": caption(s), "source": "clean"}
                  for i, s in enumerate(scenes(shapes_data, int(clean.get("seed", 2)), int(clean.get("n", 1000))))]
    web_rows = []
    for i, s in enumerate(scenes(shapes_data, int(web.get("seed", 1)), int(web.get("n", 3000)))):
        wrong = rng.random() < noise
        web_rows.append({"id": f"web-{i}", "image": render(s), "image_file": f"web-{i}.png", "truth": caption(s),
                         "caption": caption(corrupt(s, rng)) if wrong else caption(s), "source": "web"})
    noisy_path = write_pairs(out / "data_noisy", web_rows + clean_rows)
    clean_path = write_pairs(out / "data_clean", clean_rows)
    eval_n = int((config.get("eval") or {}).get("n", 300))

    # 1. pretrain on noisy data; 2. fine-tune the captioner (LM) and the filter (ITC + ITM) on clean data
    pre = config.get("pretrain") or {}
    resume = bool(config.get("resume", False))
    noisy_model = train_stage(base, out / "pretrain_noisy", noisy_path, pre, evaluate_n=eval_n, resume=resume)
    tok_dir = noisy_model
    fine = config.get("finetune") or {}
    captioner = train_stage(base, out / "captioner", clean_path, fine, tokenizer=tok_dir, resume=resume,
                            model={"from": str(noisy_model), "objectives": ["lm"]})
    filt = train_stage(base, out / "filter", clean_path, fine, tokenizer=tok_dir, resume=resume,
                       model={"from": str(noisy_model), "objectives": ["itc", "itm"]})

    # 3. caption every web image; 4. filter original and synthetic texts with ITM
    tok = Tokenizer.from_dir(tok_dir)
    cap = config.get("caption") or {}
    images = [r["image"] for r in web_rows]
    synthetic = caption_images(load_model(captioner), tok, images, float(cap.get("top_p", 0.9)),
                               int(cap.get("max_new_tokens", 24)), int(cap.get("batch_size", 64)), seed=0)
    threshold = float((config.get("filter") or {}).get("threshold", 0.5))
    filter_model = load_model(filt)
    keep_web = itm_filter(filter_model, tok, images, [r["caption"] for r in web_rows], 64)
    keep_syn = itm_filter(filter_model, tok, images, synthetic, 64)
    kept_web = [r for r, p in zip(web_rows, keep_web) if p is not None and p > threshold]
    syn_rows = [{**r, "id": f"syn-{i}", "caption": c, "source": "synthetic"}
                for i, (r, c) in enumerate(zip(web_rows, synthetic))]
    kept_syn = [r for r, p in zip(syn_rows, keep_syn) if p is not None and p > threshold]

    # 5. the bootstrapped dataset; 6. pretrain a new model on it
    boot_rows = kept_web + kept_syn + clean_rows
    if not boot_rows:
        raise InputError("the filter kept nothing; lower filter.threshold")
    boot_path = write_pairs(out / "data_bootstrapped", boot_rows)
    boot_model = train_stage(base, out / "pretrain_bootstrapped", boot_path, pre, tokenizer=tok_dir,
                             evaluate_n=eval_n, resume=resume)

    result = {
        "web_pairs": len(web_rows), "clean_pairs": len(clean_rows), "noise_before": noise_rate(web_rows),
        "web_kept": len(kept_web), "noise_web_after_filter": noise_rate(kept_web),
        "synthetic_correct_before_filter": 1 - noise_rate(syn_rows), "synthetic_kept": len(kept_syn),
        "rejected_unencodable": {"web": keep_web.count(None), "synthetic": keep_syn.count(None)},
        "noise_synthetic_after_filter": noise_rate(kept_syn),
        "noise_noisy_dataset": noise_rate(web_rows + clean_rows), "noise_bootstrapped_dataset": noise_rate(boot_rows),
        "bootstrapped_pairs": len(boot_rows),
        "retrieval_noisy": evaluate(noisy_model, "retrieval", n=eval_n, printer=lambda s: None),
        "retrieval_bootstrapped": evaluate(boot_model, "retrieval", n=eval_n, printer=lambda s: None),
    }
    if config.get("clean_baseline"):   # what the clean pairs alone give: does the bootstrapped web data add anything?
        clean_model = train_stage(base, out / "pretrain_clean_only", clean_path, pre, tokenizer=tok_dir,
                                  evaluate_n=eval_n, resume=resume)
        result["retrieval_clean_only"] = evaluate(clean_model, "retrieval", n=eval_n, printer=lambda s: None)
    (out / "capfilt.json").write_text(json.dumps(result, indent=1))
    printer(report(result))
    return result


def report(r: dict) -> str:
    rows = [("web texts: wrong before filtering", f"{r['noise_before']:.1%} of {r['web_pairs']}"),
            ("web texts: wrong after filtering", f"{r['noise_web_after_filter']:.1%} of {r['web_kept']} kept"),
            ("synthetic captions: correct", f"{r['synthetic_correct_before_filter']:.1%} of {r['web_pairs']}"),
            ("synthetic captions: wrong after filtering",
             f"{r['noise_synthetic_after_filter']:.1%} of {r['synthetic_kept']} kept"),
            ("dataset noise: noisy -> bootstrapped",
             f"{r['noise_noisy_dataset']:.1%} -> {r['noise_bootstrapped_dataset']:.1%} "
             f"({r['bootstrapped_pairs']} pairs)")]
    for name in ("noisy", "bootstrapped", "clean_only"):
        if f"retrieval_{name}" not in r:
            continue
        m = r[f"retrieval_{name}"]
        rows.append((f"held-out retrieval, model on {name} data",
                     f"t2i R@1 {m['t2i_R@1']:.3f}  i2t R@1 {m['i2t_R@1']:.3f}  t2i R@5 {m['t2i_R@5']:.3f}"))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(__doc__)
        return 2
    try:
        config = apply_overrides(yaml.safe_load(Path(argv[0]).read_text()), argv[1:])
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read capfilt config {argv[0]}: {e}") from e
    run_capfilt(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["corrupt", "run_capfilt", "caption_images", "itm_filter", "write_pairs", "noise_rate", "same_caption",
           "report", "main"]
