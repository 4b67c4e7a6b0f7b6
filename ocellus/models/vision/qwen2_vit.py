"""The Qwen2-VL / Qwen2.5-VL vision transformer (Wang et al. 2024, "Qwen2-VL"; Bai et al. 2025,
"Qwen2.5-VL Technical Report"): a ViT that takes images at their own resolution.

- Patches: 14x14 pixels x 2 frames (temporal patch; a still image is its frame repeated), embedded
  by a Conv3d whose stride equals its kernel, i.e. one matmul per flattened patch. The processor
  (data/image_tiling.qwen2vl_patchify) hands in the patches flattened, [L, C*2*14*14], with each
  2x2 merge group contiguous, plus grid_thw [N, 3] saying how many (t, h, w) patches each
  image/video has.
- No learned position table: 2D RoPE inside attention, the first half of each head's rotary
  frequencies turned by the patch row, the second half by its column.
- Several images of different sizes are packed into ONE sequence; attention is block-diagonal
  (cu_seqlens: each frame of each image sees only itself), so packing changes nothing.
- Qwen2.5-VL: RMSNorm + SwiGLU blocks, and window attention (windows of `window_size` pixels,
  windows made contiguous by reordering the merge groups) in every block except
  `fullatt_block_indexes`, which attend over the whole frame.
The 2x2 patch merger that follows lives in models/connectors/merger.py. Matches transformers'
Qwen2VisionTransformerPretrainedModel / Qwen2_5_VisionTransformerPretrainedModel (hidden states
before the merger; tests/parity/test_qwen2_vl_parity.py). Names (patch_embed.proj, blocks.{i}.attn.qkv,
...) are theirs.
A tower saved alone (a qwen2_vl recipe's vision_from): models/families/qwen2_vl/tower.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.nn.attention import attend
from ocellus.nn.mlp import GeluMLP, SwiGLU
from ocellus.nn.norms import LayerNorm, RMSNorm
from ocellus.nn.rope import apply_rotary

VARIANTS = ("qwen2_vl", "qwen2_5_vl")


@dataclass(frozen=True)
class Qwen2VisionConfig:
    variant: str = "qwen2_vl"        # "qwen2_vl": LayerNorm + GELU MLP; "qwen2_5_vl": RMSNorm + SwiGLU + windows
    depth: int = 32
    hidden_size: int = 1280          # the ViT's width (Qwen2-VL's config calls it embed_dim)
    num_heads: int = 16
    intermediate_size: int = 5120
    hidden_act: str = "quick_gelu"
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    out_hidden_size: int = 3584      # the merger's output: the LLM's width
    rope_theta: float = 10000.0
    window_size: int = 112           # Qwen2.5-VL: window side in pixels
    fullatt_block_indexes: tuple[int, ...] = ()
    tokens_per_second: float | None = None  # Qwen2.5-VL: temporal M-RoPE ids per second of video
    hf: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"vision variant must be one of {VARIANTS}, got {self.variant!r}")
        positive_ints(self, ("depth", "hidden_size", "num_heads", "intermediate_size", "patch_size",
                             "temporal_patch_size", "spatial_merge_size", "in_channels", "out_hidden_size"),
                      "vision_config.{}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ConfigError(f"vision hidden_size {self.hidden_size} / num_heads {self.num_heads} must give a head "
                              f"dim divisible by 4 (2D RoPE splits it into row and column halves)")
        # an index past the last block attends nowhere, as in transformers, which saves its default (7, 15, 23, 31)
        # for a tower of any depth; a negative one would read as "from the end" to a person but is no block there
        bad = [i for i in self.fullatt_block_indexes if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            raise ConfigError(f"vision_config.fullatt_block_indexes {bad} are not block numbers (ints >= 0)")
        if self.variant == "qwen2_5_vl" and self.window_size % (self.patch_size * self.spatial_merge_size):
            raise ConfigError(f"vision_config.window_size {self.window_size} must be a multiple of patch_size * "
                              f"spatial_merge_size = {self.patch_size * self.spatial_merge_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @classmethod
    def from_hf(cls, cfg: dict, variant: str) -> "Qwen2VisionConfig":
        """Qwen2VLVisionConfig / Qwen2_5_VLVisionConfig dict (transformers' defaults for what it leaves out)."""
        cfg = _aliased(cfg)
        theta = float((cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        common = dict(variant=variant, patch_size=cfg.get("patch_size", 14),
                      temporal_patch_size=cfg.get("temporal_patch_size", 2),
                      spatial_merge_size=cfg.get("spatial_merge_size", 2), in_channels=cfg.get("in_channels", 3),
                      rope_theta=theta, hf=dict(cfg))
        if variant == "qwen2_vl":
            width = cfg.get("embed_dim", 1280)
            ratio = cfg.get("mlp_ratio", 4)
            return cls(depth=cfg.get("depth", 32), hidden_size=width, num_heads=cfg.get("num_heads", 16),
                       intermediate_size=int(width * ratio), hidden_act=cfg.get("hidden_act", "quick_gelu"),
                       out_hidden_size=cfg.get("hidden_size", 3584), **common)
        return cls(depth=cfg.get("depth", 32), hidden_size=cfg.get("hidden_size", 3584),
                   num_heads=cfg.get("num_heads", 16), intermediate_size=cfg.get("intermediate_size", 3420),
                   hidden_act=cfg.get("hidden_act", "silu"), out_hidden_size=cfg.get("out_hidden_size", 3584),
                   window_size=cfg.get("window_size", 112),
                   fullatt_block_indexes=tuple(cfg.get("fullatt_block_indexes", (7, 15, 23, 31))),
                   tokens_per_second=cfg.get("tokens_per_second", 4), **common)

    def to_hf(self) -> dict:
        out = {k: v for k, v in self.hf.items() if k not in ("architectures", "torch_dtype", "dtype")}
        out.update(depth=self.depth, num_heads=self.num_heads, hidden_act=self.hidden_act, patch_size=self.patch_size,
                   temporal_patch_size=self.temporal_patch_size, spatial_merge_size=self.spatial_merge_size,
                   in_channels=self.in_channels)
        out.setdefault("rope_parameters", {"rope_type": "axial"})
        out["rope_parameters"] = {**out["rope_parameters"], "rope_theta": self.rope_theta}
        if self.variant == "qwen2_vl":
            out.update(model_type="qwen2_vl_vision", embed_dim=self.hidden_size, hidden_size=self.out_hidden_size,
                       mlp_ratio=mlp_ratio(self.hidden_size, self.intermediate_size))
        else:
            out.update(model_type="qwen2_5_vl_vision", hidden_size=self.hidden_size,
                       out_hidden_size=self.out_hidden_size, intermediate_size=self.intermediate_size,
                       window_size=self.window_size, fullatt_block_indexes=list(self.fullatt_block_indexes),
                       tokens_per_second=self.tokens_per_second)
        return out


# the other names transformers' vision configs take for a field (their attribute_map)
ALIASES = {"num_attention_heads": "num_heads", "num_hidden_layers": "depth"}


def _aliased(cfg: dict) -> dict:
    """cfg with ALIASES' names read as the fields they stand for (a config.json may spell the heads
    num_attention_heads: read as the default 16 heads, a 1280-wide tower silently splits into other heads)."""
    cfg = dict(cfg)
    for alias, name in ALIASES.items():
        if alias in cfg:
            value = cfg.pop(alias)
            if cfg.setdefault(name, value) != value:
                raise ConfigError(f"vision_config has both {name}={cfg[name]!r} and {alias}={value!r}")
    return cfg


def mlp_ratio(width: int, mlp_width: int) -> int | float:
    """Qwen2-VL's config spelling of its MLP width: a ratio read back as int(width * ratio) (transformers'
    VisionMlp). A fractional one (transformers 5 types it int, so such a tower stays Ocellus') is the float
    just above the quotient when the quotient itself reads back one short (56 wide, 61: 61/56 * 56 = 60.99...)."""
    if mlp_width % width == 0:
        return mlp_width // width
    ratio = mlp_width / width
    return ratio if int(width * ratio) == mlp_width else math.nextafter(ratio, math.inf)


# ---- positions and attention groups, from grid_thw alone ----------------------------------------
def check_grids(grid_thw: torch.Tensor, merge_size: int, what: str = "image_grid_thw") -> list[tuple[int, int, int]]:
    if grid_thw.dim() != 2 or grid_thw.shape[1] != 3:
        raise InputError(f"{what} must be [N, 3] (t, h, w patches per image/video), got {tuple(grid_thw.shape)}")
    grids = [tuple(int(v) for v in g) for g in grid_thw.tolist()]
    for n, (t, h, w) in enumerate(grids):
        if min(t, h, w) <= 0 or h % merge_size or w % merge_size:
            raise InputError(f"{what}[{n}] = {[t, h, w]}: t, h, w must be positive and h, w divisible by the "
                             f"merge size {merge_size}")
    return grids


def patch_positions(grids, merge_size: int) -> torch.Tensor:
    """(row, col) of every patch, [L, 2], in the processor's order: frame, merge group (row-major over
    the merged grid), then the m x m patches of the group."""
    out = []
    for t, h, w in grids:
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")      # [h, w] each
        rc = torch.stack((rows, cols), -1)                                               # [h, w, 2]
        rc = rc.view(h // merge_size, merge_size, w // merge_size, merge_size, 2).transpose(1, 2)  # [h/m, w/m, m, m, 2]
        out.append(rc.reshape(-1, 2).repeat(t, 1))                                       # [t*h*w, 2]
    return torch.cat(out)


def frame_segments(grids) -> torch.Tensor:
    """Segment id of every patch [L]: each frame of each image/video is its own attention segment."""
    sizes = [h * w for t, h, w in grids for _ in range(t)]
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def window_order(grids, merge_size: int, window_merged: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL windows. -> (order [L/m^2]: merge groups reordered so each window is contiguous,
    window segment id of every patch [L] in that order). Windows tile each frame's merged grid from
    the top-left, window_merged x window_merged groups each (edge windows are smaller)."""
    order, seg_sizes, offset = [], [], 0
    for t, h, w in grids:
        H, W = h // merge_size, w // merge_size
        idx = torch.arange(t * H * W).view(t, H, W) + offset
        nh, nw = -(-H // window_merged), -(-W // window_merged)
        padded = F.pad(idx, (0, nw * window_merged - W, 0, nh * window_merged - H), value=-1)
        windows = padded.view(t, nh, window_merged, nw, window_merged).permute(0, 1, 3, 2, 4)
        windows = windows.reshape(t * nh * nw, window_merged * window_merged)            # [windows, ws*ws]
        keep = windows >= 0
        order.append(windows[keep])
        seg_sizes += [int(k) * merge_size ** 2 for k in keep.sum(-1).tolist() if k]
        offset += t * H * W
    segments = torch.repeat_interleave(torch.arange(len(seg_sizes)), torch.tensor(seg_sizes))
    return torch.cat(order), segments


class Segments:
    """Contiguous runs of one segment id (the frames of the images, or Qwen2.5-VL's windows): a patch
    attends only inside its own run. Attention runs on the runs batched, [n, H, S, Dh] (padded to the
    longest run when they differ), never as one [L, L] block-diagonal mask: that costs the square of ALL
    patches of the batch (32 images of 64 patches: 32x the work of per-image attention)."""

    def __init__(self, ids: torch.Tensor):
        sizes = torch.unique_consecutive(ids, return_counts=True)[1]                    # [n]
        self.n, self.longest = len(sizes), int(sizes.max())
        self.equal = bool((sizes == self.longest).all())
        if not self.equal:
            offsets = torch.arange(self.longest, device=ids.device)
            self.valid = offsets[None] < sizes[:, None]                                 # [n, S]
            starts = torch.cumsum(sizes, 0) - sizes
            self.index = (starts[:, None] + offsets[None]).clamp(max=len(ids) - 1)     # [n, S] rows of L

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v [H, L, Dh] -> [H, L, Dh], each run attending to itself only."""
        H, L, Dh = q.shape
        if self.equal:
            runs = [t.view(H, self.n, self.longest, Dh).transpose(0, 1) for t in (q, k, v)]   # [n, H, S, Dh]
            return attend(*runs, None, is_causal=False).transpose(0, 1).reshape(H, L, Dh)
        runs = [t[:, self.index].transpose(0, 1) for t in (q, k, v)]                   # [n, H, S, Dh] padded
        y = attend(*runs, self.valid[:, None, None, :], is_causal=False)                # pads are never keys
        return y.transpose(0, 1)[:, self.valid]                                         # [H, L, Dh]


# ---- the network ----------------------------------------------------------------------------------
class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], segments: Segments):
        L, D = x.shape
        q, k, v = self.qkv(x).view(L, 3, self.num_heads, -1).permute(1, 2, 0, 3).unbind(0)  # 3 x [H, L, Dh]
        # the rotation runs in fp32, as the reference does (it matters in bf16)
        q, k = (apply_rotary(t[None].float(), *rope).to(x.dtype)[0] for t in (q, k))        # [H, L, Dh]
        y = segments.attend(q, k, v)                                                       # [H, L, Dh]
        return self.proj(y.transpose(0, 1).reshape(L, D))


class VisionBlock(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        D = cfg.hidden_size
        if cfg.variant == "qwen2_vl":
            self.norm1, self.norm2 = LayerNorm(D, eps=1e-6), LayerNorm(D, eps=1e-6)
            self.mlp = GeluMLP(D, cfg.intermediate_size, act=cfg.hidden_act)
        else:
            self.norm1, self.norm2 = RMSNorm(D, eps=1e-6), RMSNorm(D, eps=1e-6)
            self.mlp = SwiGLU(D, cfg.intermediate_size, bias=True, act=cfg.hidden_act)
        self.attn = VisionAttention(D, cfg.num_heads)

    def forward(self, x, rope, segments):
        x = x + self.attn(self.norm1(x), rope, segments)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv3d with stride = kernel = (2, 14, 14) over one patch is a matmul with the flattened kernel;
    the Conv3d module is kept for its checkpoint name and [D, C, 2, 14, 14] shape."""

    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        return F.linear(patches.to(w.dtype), w.view(w.shape[0], -1))                   # [L, D]


class Qwen2VisionTransformer(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        half = cfg.head_dim // 2  # rows and columns each rotate half the head: head_dim/4 frequencies each
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, half, 2).float() / half),
                             persistent=False)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module, std: float = 0.02) -> None:
        """N(0, 0.02) weights, zero biases, for a tower trained from scratch (loading skips this)."""
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def rope(self, grids, device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = patch_positions(grids, self.config.spatial_merge_size).to(device)         # [L, 2]
        freqs = (pos[..., None].float() * self.inv_freq).flatten(1)                    # [L, Dh/2]: rows, then cols
        emb = torch.cat((freqs, freqs), dim=-1)[None]                                   # [1, L, Dh]
        return emb.cos(), emb.sin()

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [L, C*T*p*p] flattened patches; grid_thw [N, 3] -> hidden states [L, D] of the
        last block, in the input's patch order (merge groups contiguous, ready for the merger)."""
        cfg = self.config
        m = cfg.spatial_merge_size
        grids = check_grids(grid_thw, m)
        L = sum(t * h * w for t, h, w in grids)
        if pixel_values.dim() != 2 or pixel_values.shape != (L, cfg.patch_dim):
            raise InputError(f"pixel_values must be [{L}, {cfg.patch_dim}] (the patches grid_thw {[list(g) for g in grids]} "
                             f"describes, each C*{cfg.temporal_patch_size}*{cfg.patch_size}^2 values), "
                             f"got {tuple(pixel_values.shape)}")
        x = self.patch_embed(pixel_values)                                               # [L, D]
        cos, sin = self.rope(grids, x.device)                                            # [1, L, Dh]
        frames = Segments(frame_segments(grids).to(x.device))
        windowed = cfg.variant == "qwen2_5_vl"
        if windowed:  # reorder merge groups window by window (rope angles travel with their patch)
            order, win_segments = window_order(grids, m, cfg.window_size // m // cfg.patch_size)
            order = order.to(x.device)
            x = _regroup(x, order, m)
            cos, sin = _regroup(cos[0], order, m)[None], _regroup(sin[0], order, m)[None]
            windows = Segments(win_segments.to(x.device))
        for i, block in enumerate(self.blocks):
            # frames stay contiguous under the window reordering, so one frame split serves both orders
            segments = windows if windowed and i not in cfg.fullatt_block_indexes else frames
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, (cos, sin), segments, use_reentrant=False)
            else:
                x = block(x, (cos, sin), segments)
        if windowed:
            x = _regroup(x, torch.argsort(order), m)                                     # back to the input order
        return x


def _regroup(x: torch.Tensor, order: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Reorder the rows of x [L, D] by merge group: group g of the result is group order[g] of x."""
    L, D = x.shape
    group = merge_size * merge_size
    return x.view(L // group, group, D)[order].reshape(L, D)
