"""ALBEF and BLIP pretraining: the hooks of tasks albef / blip (train/tasks/albef_blip.py runs them through
run.run_trainer, as BLIP's CapFilt does: train/capfilt.py):

  task: albef   ITC (momentum queues + distillation) + ITM (hard negatives) + image-conditioned MLM
  task: blip    ITC + ITM + LM of the multimodal mixture of encoder-decoder

model (recipe section):
  vision: {image_size, patch_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads}
  text:   {hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, max_position_embeddings}
  align:  {embed_dim, queue_size, momentum, alpha, alpha_warmup_steps, temp, text_layers (albef),
           mlm_probability (albef), label_smoothing (blip)}        AlignConfig fields
  objectives: [itc, itm, lm]    (blip) which losses train; CapFilt's captioner uses [lm], its filter [itc, itm]
  from: DIR                     continue from an exported model (CapFilt's fine-tuning)
data: {source: shapes, n, seed, image_size, min_objects, max_objects}   generated scenes + captions
      {source: llava_json, path: data.json}   (image, caption) pairs: each record's image and its last
                                              assistant turn (what train/capfilt.py writes)
eval: {n: 300}   after export: held-out image<->text recall@1/5/10, by ITC alone and with the top 16
                 re-ranked by ITM (the papers' protocol); printed and written to <out>/eval.json

Pairs with equal captions share an id (data/shapes_pairs.caption_id): positives of each other in ITC,
never each other's ITM negatives.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from ocellus.data.bad_samples import BadSampleReport, screen
from ocellus.data.image import image_config, load_image, preprocess
from ocellus.data.llava_json import read_llava_json
from ocellus.data.shapes_pairs import caption_id, shapes_pairs
from ocellus.data.shards import ImageText
from ocellus.errors import ConfigError, InputError
from ocellus.eval.retrieval import EVAL_SEED, evaluate, recall_at_k, SHAPES_RENDER_SIZE
from ocellus.hub.checkpoint import save_model
from ocellus.models.contrastive.albef import AlignConfig, build_albef, encode_captions
from ocellus.models.contrastive.blip import build_blip
from ocellus.train.contrastive_run import write_preprocessor
from ocellus.train.recipe import check_recipe
from ocellus.train.recipe_data import EncodedDataset
from ocellus.train.run import build_tokenizer   # the captions' tokenizer: a hook run.run_trainer calls

log = logging.getLogger(__name__)

MODEL_KEYS = {"vision", "text", "align", "objectives", "from", "init_from"}


def validate(recipe: dict, where: str = "recipe") -> None:
    """(image, caption) pairs; any train.stage parts (vision, text, fusion, ...)."""
    check_recipe(recipe, where, data="image")


def align_config(spec: dict, tok):
    if tok.eos_token_id is None:
        raise ConfigError("ALBEF/BLIP captions end with the tokenizer's eos_token ([SEP]); this tokenizer has none")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return AlignConfig.from_dict({**(spec.get("align") or {}), "tokenizer_size": len(tok),
                                  "eos_token_id": tok.eos_token_id, "pad_token_id": pad})


def build_model(recipe: dict, tok):
    spec = recipe.get("model") or {}
    if set(spec) - MODEL_KEYS:
        raise ConfigError(f"task {recipe['task']}: unknown model keys {sorted(set(spec) - MODEL_KEYS)}; "
                          f"known: {sorted(MODEL_KEYS)}")
    missing = [k for k in ("vision", "text") if k not in spec]
    if missing:
        raise ConfigError(f"task {recipe['task']}: model.{missing[0]} is required (or model.from: an exported model)")
    config = {"vision_config": dict(spec["vision"]), "text_config": dict(spec["text"]),
              "align_config": asdict(align_config(spec, tok))}
    return build_albef(config) if recipe["task"] == "albef" else build_blip(config)


def objectives(recipe: dict) -> tuple[str, ...] | None:
    chosen = (recipe.get("model") or {}).get("objectives")
    if chosen is None:
        return None
    if recipe["task"] != "blip":
        raise ConfigError("model.objectives chooses BLIP's losses (itc, itm, lm); ALBEF always trains all three")
    return tuple(chosen)


# ---- data --------------------------------------------------------------------------------------
def caption_of(sample: dict) -> str:
    """The last assistant turn of a conversation: the caption of a captioning record."""
    texts = [p["text"] for m in sample["messages"] if m["role"] == "assistant" for p in m["content"]
             if p.get("type") == "text"]
    if not texts:
        raise InputError(f"record {sample.get('id')!r} has no assistant text to use as its caption")
    return texts[-1].strip()


def pair_source(data: dict, n: int, report: BadSampleReport | None = None):
    """-> (number of pairs, i -> (PIL image, caption)). A LLaVA-JSON file's pairs are all opened once here,
    before step 1: a corrupt image is an InputError naming file and record now, or with data.skip_bad_samples
    is left out and counted in `report` (never a crash mid-training)."""
    seed = int(data.get("seed", 0))
    if data["source"] == "shapes":
        return n, shapes_pairs(data, seed, n)
    if data["source"] == "llava_json":
        skip = bool(data.get("skip_bad_samples", False))
        report = report if report is not None else BadSampleReport(str(data["path"]))
        rows = read_llava_json(data["path"], skip_bad_samples=skip, report=report).samples
        pair = lambda i: (load_image(rows[i]["images"][0], name=f"record {rows[i]['id']}"),   # noqa: E731
                          caption_of(rows[i]))
        kept = screen(min(n, len(rows)), pair, lambda i: f"record {rows[i]['id']!r}", report, skip)
        return len(kept), lambda i: pair(kept[i])
    raise ConfigError(f"ALBEF/BLIP train on (image, caption) pairs: data.source shapes or llava_json, "
                      f"got {data['source']!r}")


def build_dataset(recipe: dict, tok, model):
    data = recipe["data"]
    report = BadSampleReport(str(data["path"])) if data.get("path") else None
    n, pair = pair_source(data, int(data.get("n", 1000)), report)
    icfg = image_config(model.visual_encoder.config.image_size)

    def make(i):
        image, text = pair(i)
        return preprocess([image], icfg)[0], text
    return EncodedDataset(n, make, bad_samples=report), caption_batch(recipe, tok, model)


def shard_data(recipe: dict, tok, model):
    """The shard loader's hook (train/shard_loader.py): (image, caption) pairs of tar shards, decoded in the
    loader workers as CLIP's are (data/shards.ImageText), batched as build_dataset's."""
    return ImageText(image_config(model.visual_encoder.config.image_size)), caption_batch(recipe, tok, model)


def caption_batch(recipe: dict, tok, model):
    """-> collate([(pixel_values [3, H, W], caption), ...]): captions tokenized for the text encoder, pixels
    stacked, ids = caption_id (equal captions are positives), the chosen BLIP objectives."""
    max_len = int(recipe["data"].get("max_length") or model.text_encoder.config.max_position_embeddings)
    chosen = objectives(recipe)

    def collate(rows):
        texts = [r[1] for r in rows]
        batch = {**encode_captions(texts, tok, model.config, max_len),
                 "pixel_values": torch.stack([r[0] for r in rows]), "ids": torch.tensor([caption_id(t) for t in texts])}
        return {**batch, "objectives": chosen} if chosen else batch
    return collate


# ---- export + evaluation -----------------------------------------------------------------------
def export(recipe: dict, model, tok, path: Path) -> Path:
    save_model(model, path, tokenizer=tok)
    write_preprocessor(path, model.visual_encoder.config.image_size)
    if recipe.get("eval") is not None:
        n = int((recipe.get("eval") or {}).get("n", 300))
        result = {"retrieval": evaluate(path, "retrieval", n=n)}
        result["retrieval_itm_rerank"] = itm_rerank_retrieval(model.eval(), tok, n)
        log.info("retrieval (ITC top-16 re-ranked by ITM)  " + "  ".join(
            f"{k}={v:.3f}" for k, v in result["retrieval_itm_rerank"].items()))
        (path.parent / "eval.json").write_text(json.dumps(result, indent=1))
    return path


@torch.no_grad()
def itm_rerank_retrieval(model, tok, n: int = 300, k: int = 16, batch: int = 256) -> dict[str, float]:
    """ALBEF's and BLIP's retrieval protocol on the held-out shapes of eval/retrieval.py: rank by ITC,
    then re-rank each query's top k by the ITM head's P(match). Identical captions count as correct."""
    pair = shapes_pairs({"image_size": SHAPES_RENDER_SIZE}, EVAL_SEED, n)
    images, captions = zip(*(pair(i) for i in range(n)))
    pixels = preprocess(list(images), image_config(model.visual_encoder.config.image_size))
    states = model.visual_encoder(pixels)
    image_feat = torch.nn.functional.normalize(model.vision_proj(states.pooler_output), dim=-1)      # [I, E]
    enc = encode_captions(list(captions), tok, model.config, model.text_encoder.config.max_position_embeddings)
    text_feat = torch.nn.functional.normalize(model.get_text_features(**enc), dim=-1)               # [T, E]
    sim = text_feat @ image_feat.t()                                                                 # [T, I]
    correct = torch.tensor([[a == b for b in captions] for a in captions])
    k = min(k, n)

    def rerank(s: torch.Tensor, text_of, image_of) -> torch.Tensor:
        top = s.topk(k, dim=1).indices                                                               # [Q, k]
        q = torch.arange(s.shape[0])[:, None].expand_as(top).flatten()
        t, i = text_of(q, top.flatten()), image_of(q, top.flatten())
        p = torch.cat([model.itm_from_states(states.last_hidden_state[i[j:j + batch]],
                                             enc["input_ids"][t[j:j + batch]], enc["attention_mask"][t[j:j + batch]])
                       for j in range(0, len(t), batch)])
        out = s.clone()
        out.scatter_(1, top, 10.0 + p.view(-1, k))        # the re-ranked top k stay above the rest
        return out
    t2i = rerank(sim, lambda q, c: q, lambda q, c: c)
    i2t = rerank(sim.t(), lambda q, c: c, lambda q, c: q)
    out = {f"t2i_R@{r}": v for r, v in recall_at_k(t2i, correct).items()}
    out.update({f"i2t_R@{r}": v for r, v in recall_at_k(i2t, correct.t()).items()})
    return out


__all__ = ["validate", "build_tokenizer", "build_model", "build_dataset", "shard_data", "export", "caption_of", "pair_source", "align_config",
           "itm_rerank_retrieval"]
