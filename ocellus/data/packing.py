"""Sequence packing: several samples share one row of max_len tokens, without seeing each other.

Each packed row carries `document_ids` (the mask builder lets a token attend only inside its
own document) and `position_ids` that restart at 0 for every document, so each sample is
computed exactly as if it were alone. The first label of every document after the first is
set to -100: unpacked, nothing predicts a sample's first token, and packed, the previous
document's last token must not be trained to predict it either. Images travel with their
sample, in order, so the splice still finds them in placeholder order.

`data.pack: true` in a recipe (task lm, or vlm with an early-fusion family) collates each training batch with
`pack_batch`: the batch's samples share rows of data.max_length tokens (or its longest sample's), so the
padding of an unpacked batch is mostly gone while every trained token keeps its loss (the loss is the same
mean over the same tokens). Attention still runs over whole rows (a dense mask), so wider rows cost more there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ocellus.errors import InputError

IGNORE = -100


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    document_ids: list[int] = field(default_factory=list)
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    num_docs: int = 0
    sources: list[int] = field(default_factory=list)  # index in `samples` of each document, in row order

    def add(self, sample: dict) -> None:
        ids, labels = list(sample["input_ids"]), list(sample["labels"])
        if self.num_docs:
            labels[0] = IGNORE
        self.input_ids += ids
        self.labels += labels
        self.position_ids += range(len(ids))
        self.document_ids += [self.num_docs] * len(ids)
        self.pixel_values += list(sample.get("pixel_values", []))
        self.num_docs += 1


def pack(samples: list[dict], max_len: int) -> list[PackedRow]:
    """First-fit-decreasing bin packing of samples (dicts with input_ids, labels and optional
    pixel_values [N_i, 3, H, W]) into rows of at most max_len tokens."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]["input_ids"]))
    rows: list[PackedRow] = []
    for i in order:
        n = len(samples[i]["input_ids"])
        if n > max_len:
            raise InputError(f"sample {i} has {n} tokens, more than the packing length {max_len}")
        row = next((r for r in rows if len(r.input_ids) + n <= max_len), None)
        if row is None:
            row = PackedRow()
            rows.append(row)
        row.add(samples[i])
        row.sources.append(i)
    return rows


def collate_packed(rows: list[PackedRow], max_len: int, pad_id: int = 0) -> dict:
    """-> input_ids, labels, position_ids, document_ids [B, max_len] (+ pixel_values). Padding
    forms its own document (id -1) with ignored labels."""
    B = len(rows)
    out = {k: torch.full((B, max_len), v, dtype=torch.long) for k, v in
           (("input_ids", pad_id), ("labels", IGNORE), ("position_ids", 0), ("document_ids", -1))}
    for b, r in enumerate(rows):
        n = len(r.input_ids)
        out["input_ids"][b, :n] = torch.tensor(r.input_ids)
        out["labels"][b, :n] = torch.tensor(r.labels)
        out["position_ids"][b, :n] = torch.tensor(r.position_ids)
        out["document_ids"][b, :n] = torch.tensor(r.document_ids)
    pixels = [p for r in rows for p in r.pixel_values]
    if pixels:
        out["pixel_values"] = torch.stack(pixels)
    return out


def pack_batch(samples: list, pad_id: int, width: int | None = None, images: list[dict] | None = None,
               family_collate=None) -> dict:
    """One training batch, packed: its samples (dicts or EncodedSamples with input_ids and labels) in rows of
    `width` tokens (data.max_length; at least the longest sample), cut to the fullest row, with document_ids,
    per-document position_ids and attention_mask (0 on padding). images: each sample's image tensors (a dict of tensors concatenable along dim 0), joined in the
    order the documents sit in the rows, the order the model splices them in. family_collate(rows, samples,
    width): a family's own packed collate instead (Qwen2-VL: M-RoPE ids per document, images in the samples)."""
    samples = [s if isinstance(s, dict) else {"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    rows = pack(samples, max([len(s["input_ids"]) for s in samples] + [width or 0]))
    width = max(len(r.input_ids) for r in rows)
    if family_collate is not None:
        batch = family_collate(rows, samples, width)
    else:
        batch = collate_packed(rows, width, pad_id)
        order = [i for r in rows for i in r.sources]
        for key in (images[0] if images else {}):
            batch[key] = torch.cat([images[i][key] for i in order])
    batch["attention_mask"] = (batch["document_ids"] >= 0).long()
    return batch
