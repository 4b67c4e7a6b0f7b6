"""BLIP-2 stage 1's recipe side (`task: qformer_pretrain`): the stage-1 model of a recipe (a pretrained ViT + a
new Q-Former) and its caption data. The model, its three masks and objectives (ITC / ITG / ITM) and its
checkpoint format live in models/families/blip2/stage1.py."""
from __future__ import annotations

from pathlib import Path

import torch

from ocellus.data.image import preprocess
from ocellus.data.shapes import sample_at
from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.models.families.blip2.stage1 import QFormerPretraining, build_stage1
from ocellus.train.recipe_data import EncodedDataset


def encode_caption(text_ids: list[int], model: QFormerPretraining, eos_id: int | None) -> list[int]:
    """[CLS] + the caption's ids (+ eos, so ITG learns where a caption ends)."""
    return [model.cls_token_id, *text_ids, *([eos_id] if eos_id is not None else [])]


def compose_stage1(spec: dict, tok) -> QFormerPretraining:
    """The stage-1 model of a recipe: a pretrained ViT (vision_from) + a new Q-Former whose text
    vocabulary is the tokenizer's plus [CLS] and [DEC].
    spec keys: qformer {num_query_tokens, hidden_size, num_hidden_layers, num_attention_heads,
    intermediate_size, cross_attention_frequency, max_position_embeddings}, embed_dim, label_smoothing,
    qformer_init (a BERT checkpoint dir to copy layers from: its vocabulary must then match)."""
    known = {"vision_from", "qformer", "embed_dim", "label_smoothing", "qformer_init", "init_from"}
    if set(spec) - known:
        raise ConfigError(f"qformer_pretrain model: unknown keys {sorted(set(spec) - known)}; known: {sorted(known)}")
    if not spec.get("vision_from"):
        raise ConfigError("qformer_pretrain needs model.vision_from (a pretrained ViT dir)")
    q = dict(spec.get("qformer") or {})
    queries = int(q.pop("num_query_tokens", 32))
    cfg = {"vision_config": read_config(Path(spec["vision_from"])),
           "qformer_config": {**q, "vocab_size": len(tok) + 2}, "num_query_tokens": queries,
           "image_text_hidden_size": int(spec.get("embed_dim", 256)),
           "label_smoothing": float(spec.get("label_smoothing", 0.1))}
    model = build_stage1(cfg)
    model.vision_tower.load_state_dict(load_model(spec["vision_from"]).state_dict())
    if spec.get("qformer_init"):
        model.qformer.from_bert(load_model(spec["qformer_init"]))
    return model


def caption_dataset(data: dict, n: int, tok, model: QFormerPretraining, shapes_config, image_config):
    """Shapes scenes with their captions (the assistant turn of kind=caption samples) ->
    {pixel_values, input_ids ([CLS] caption eos), attention_mask}."""
    if data.get("source") != "shapes":
        raise ConfigError(f"qformer_pretrain trains on shapes captions; data.source {data.get('source')!r} is not supported")
    max_len = int(data.get("max_length", 64))
    limit = model.qformer.config.max_position_embeddings

    def make(i):
        s = sample_at(shapes_config, i, data.get("kind", "caption"))
        text = " ".join(p["text"] for m in s["messages"] if m["role"] == "assistant" for p in m["content"]
                        if p.get("type") == "text")
        ids = encode_caption(tok.encode(text, add_special_tokens=False)[:max_len - 2], model, tok.eos_token_id)
        if len(ids) > limit:
            raise ConfigError(f"sample {i}: {len(ids)} caption tokens exceed the Q-Former's {limit} positions; "
                              f"lower data.max_length")
        return preprocess(s["images"], image_config), ids

    def collate(rows):
        T = max(len(r[1]) for r in rows)
        pad = tok.pad_token_id or 0
        ids = torch.tensor([r[1] + [pad] * (T - len(r[1])) for r in rows])
        mask = torch.tensor([[1] * len(r[1]) + [0] * (T - len(r[1])) for r in rows])
        return {"pixel_values": torch.cat([r[0] for r in rows]), "input_ids": ids, "attention_mask": mask}
    return EncodedDataset(n, make), collate
