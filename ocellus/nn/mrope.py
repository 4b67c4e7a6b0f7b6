"""Multimodal rotary position embedding, M-RoPE (Wang et al. 2024, "Qwen2-VL", sec. 2.1).

Every token gets three position ids (temporal, height, width) instead of one. The rotary
frequencies are split into three sections (`mrope_section`, e.g. [16, 24, 24] pairs of a
128-dim head): section k rotates by position id k. Text tokens carry the same id on all three
axes, so for text M-RoPE is plain 1D RoPE. A vision block starting at `s` gives the token of
frame t, row i, column j the ids (s + t * interval, s + i, s + j) on the merged grid, and the
text after it continues at (largest id used so far) + 1.

Qwen2.5-VL aligns video time with seconds: interval = tokens_per_second * second_per_grid_t
(seconds one temporal patch spans), so equal time steps give equal id steps whatever the fps.

Matches transformers' Qwen2VLModel / Qwen2_5_VLModel `get_rope_index` and
`Qwen2VLRotaryEmbedding` (tests/unit/test_mrope.py, tests/parity/test_qwen2_vl_parity.py), with
one deliberate difference: transformers 5.23 starts the text after a video at s + max(h, w) and
ignores the video's temporal extent, so long videos overlap the text that follows; we keep the
paper's and the original implementation's rule (max + 1; the two agree only while the last
frame's temporal offset stays below the merged grid's larger side: equal, and they differ by one).

Positions come from `input_ids` and the grids alone: runs of the image (video) pad token are cut
into images (videos) by their grids' token counts, so nothing like transformers 5's
`mm_token_type_ids` is needed (it may be passed and is checked against input_ids).
"""
from __future__ import annotations

import torch

from ocellus.errors import ConfigError, InputError
from ocellus.nn.rope import CosSin


def check_mrope_section(section, rotary_dim: int) -> tuple[int, int, int]:
    section = tuple(int(s) for s in section)
    if len(section) != 3 or sum(section) * 2 != rotary_dim or min(section) < 0:
        raise ConfigError(f"mrope_section {list(section)} must be 3 non-negative ints summing to half the rotary "
                          f"dim ({rotary_dim // 2})")
    return section


def mrope_cos_sin(cos: torch.Tensor, sin: torch.Tensor, section) -> CosSin:
    """cos/sin [3, B, T, R] (one rotation per axis; R = 2 * sum(section), the two rotate_half halves
    alike) -> [B, T, R], frequency band k taken from axis k in each half (a CosSin: the decode step's
    rotation tables are then made once for all layers)."""
    half = cos.shape[-1] // 2

    def pick(x):
        first = x[..., :half].split(list(section), dim=-1)                   # 3 x [3, B, T, s_k]
        band = torch.cat([part[axis] for axis, part in enumerate(first)], dim=-1)   # [B, T, R/2]
        return torch.cat((band, band), dim=-1)                               # [B, T, R]
    return CosSin(pick(cos), pick(sin))


def vision_position_ids(start: int, grid_thw, merge_size: int, time_interval: float = 1.0) -> torch.Tensor:
    """M-RoPE ids [3, t*h*w/m^2] of one image/video on its merged grid, in the row-major order the
    merged tokens have (frame, row, column)."""
    t, h, w = (int(v) for v in grid_thw)
    h, w = h // merge_size, w // merge_size
    # float32 product truncated, as the reference computes it (it matters for fractional intervals)
    tt = (torch.arange(t) * torch.tensor(float(time_interval), dtype=torch.float32)).long()
    ids = torch.stack(torch.meshgrid(tt, torch.arange(h), torch.arange(w), indexing="ij"))   # [3, t, h, w]
    return ids.reshape(3, -1) + start                                         # [3, t*h*w]


def _segments(ids: list[int], image_token_id, video_token_id, grids: dict, sample: int) -> list[tuple]:
    """A row's ids -> [("text", n) | (kind, grid, interval)] in order; media runs are cut by their grids."""
    out, i, n = [], 0, len(ids)
    while i < n:
        kind = "image" if ids[i] == image_token_id else "video" if ids[i] == video_token_id else None
        same = (lambda x: x == ids[i]) if kind else (lambda x: x not in (image_token_id, video_token_id))
        j = i
        while j < n and same(ids[j]):
            j += 1
        if kind is None:
            out.append(("text", j - i))
        else:
            run = j - i
            while run > 0:  # a run may hold several adjacent images/videos
                queue, merge = grids[kind]
                if not queue:
                    raise InputError(f"sample {sample}: more {kind} placeholder tokens than {kind}s given "
                                     f"({run} tokens left over at position {j - run})")
                grid, interval = queue.pop(0)
                need = int(grid[0]) * int(grid[1]) * int(grid[2]) // merge ** 2
                if need > run:
                    raise InputError(f"sample {sample}: a run of {j - i} {kind} placeholder tokens at position {i} "
                                     f"ends inside a {kind} of grid {[int(v) for v in grid]} ({need} tokens); "
                                     f"placeholder counts and {kind}_grid_thw disagree")
                out.append((kind, grid, interval))
                run -= need
        i = j
    return out


def rope_index(input_ids: torch.Tensor, *, image_token_id: int | None, video_token_id: int | None = None,
               image_grid_thw: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
               merge_size: int = 2, attention_mask: torch.Tensor | None = None,
               second_per_grid_ts=None, tokens_per_second: float | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (position_ids [3, B, T], rope_deltas [B, 1]).

    Images and videos are consumed in batch order (sample 0's first). Padding (attention_mask 0) is
    skipped and gets id 0. rope_deltas = (max id + 1) - (real tokens): a decode step at text
    position p (the plain count) uses p + delta on all three axes. tokens_per_second None is
    Qwen2-VL (one id per temporal patch); a number is Qwen2.5-VL's absolute time, scaled by
    second_per_grid_ts (one per video, default 1.0)."""
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    B, T = input_ids.shape
    seconds = [1.0] * (0 if video_grid_thw is None else len(video_grid_thw))
    if second_per_grid_ts is not None:
        seconds = [float(s) for s in (second_per_grid_ts.tolist() if torch.is_tensor(second_per_grid_ts)
                                      else second_per_grid_ts)]
        if len(seconds) != (0 if video_grid_thw is None else len(video_grid_thw)):
            raise InputError(f"second_per_grid_ts has {len(seconds)} entries for "
                             f"{0 if video_grid_thw is None else len(video_grid_thw)} videos")
    video_intervals = [1.0 if tokens_per_second is None else tokens_per_second * s for s in seconds]
    grids = {"image": ([(g, 1.0) for g in (image_grid_thw.tolist() if image_grid_thw is not None else [])], merge_size),
             "video": (list(zip(video_grid_thw.tolist() if video_grid_thw is not None else [], video_intervals)),
                       merge_size)}
    position_ids = torch.zeros(3, B, T, dtype=torch.long)
    deltas = []
    rows = input_ids.tolist()
    keep = attention_mask.bool().tolist() if attention_mask is not None else None
    for b, row in enumerate(rows):
        real = [i for i, k in enumerate(keep[b]) if k] if keep is not None else None
        ids = [row[i] for i in real] if real is not None else row
        parts, start = [], 0
        for seg in _segments(ids, image_token_id, video_token_id, grids, b):
            if seg[0] == "text":
                parts.append(torch.arange(start, start + seg[1]).expand(3, -1))   # [3, n]
                start += seg[1]
            else:
                pos = vision_position_ids(start, seg[1], merge_size, seg[2])      # [3, n]
                parts.append(pos)
                start = int(pos.max()) + 1
        row_pos = torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)   # [3, n_real]
        if real is not None:
            position_ids[:, b, real] = row_pos
        else:
            position_ids[:, b] = row_pos
        deltas.append(start - len(ids))
    for kind, (queue, _) in grids.items():
        if queue:
            raise InputError(f"{len(queue)} {kind}(s) given without placeholder tokens in input_ids "
                             f"(grids {[g for g, _ in queue]}); the prompt's {kind} placeholders and the "
                             f"{kind}_grid_thw rows disagree")
    return position_ids.to(input_ids.device), torch.tensor(deltas, device=input_ids.device)[:, None]


def check_mm_token_type_ids(mm_token_type_ids: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
                            video_token_id: int | None) -> None:
    """transformers 5's modality mask (0 text, 1 image, 2 video): accepted for compatibility, and
    it must say what input_ids already say."""
    expected = torch.zeros_like(input_ids)
    expected[input_ids == image_token_id] = 1
    if video_token_id is not None:
        expected[input_ids == video_token_id] = 2
    if mm_token_type_ids.shape != input_ids.shape or not torch.equal(mm_token_type_ids.to(expected), expected):
        raise InputError("mm_token_type_ids disagrees with input_ids (1 where the image pad token is, 2 where "
                         "the video pad token is, 0 elsewhere); Ocellus derives it from input_ids, so it may be "
                         "left out")
