"""Qwen2-VL's sequence packing (data.pack): each document keeps its own M-RoPE ids, as when it is alone."""
from __future__ import annotations

import torch

from ocellus.data.packing import collate_packed as collate_1d
from ocellus.models.families.qwen2_vl.modeling import Qwen2VL
from ocellus.nn.mrope import rope_index


def collate_packed(rows, samples: list[dict], max_len: int, model: Qwen2VL, pad_id: int = 0) -> dict:
    """data/packing.pack rows of Qwen2-VL samples (input_ids, labels, optional pixel_values [P, D] +
    image_grid_thw [N, 3]) -> input_ids, labels, document_ids [B, max_len], position_ids [3, B, max_len]
    (each document's M-RoPE ids start at 0, as when it is alone), pixel_values / image_grid_thw in the
    order the documents sit in the rows (the order splice and the ViT consume them)."""
    batch = collate_1d(rows, max_len, pad_id)
    batch.pop("pixel_values", None)  # 1D packing stacks images as LLaVA's; ours are patches + grids
    vc = model.visual.config
    position_ids = torch.zeros(3, len(rows), max_len, dtype=torch.long)
    pixels, grids = [], []
    for b, row in enumerate(rows):
        at = 0
        for i in row.sources:
            s = samples[i]
            ids = torch.as_tensor(s["input_ids"])[None]                                  # [1, n]
            grid = s.get("image_grid_thw")
            pos, _ = rope_index(ids, image_token_id=model.tokens.image, image_grid_thw=grid,
                                merge_size=vc.spatial_merge_size)                          # [3, 1, n]
            position_ids[:, b, at:at + ids.shape[1]] = pos[:, 0]
            at += ids.shape[1]
            if grid is not None:
                pixels.append(s["pixel_values"])
                grids.append(grid)
    batch["position_ids"] = position_ids
    if pixels:
        batch["pixel_values"], batch["image_grid_thw"] = torch.cat(pixels), torch.cat(grids)
    return batch
