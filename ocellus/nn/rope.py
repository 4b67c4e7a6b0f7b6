"""Rotary position embedding (RoPE, Su et al. 2021, "RoFormer").

q and k are rotated by an angle proportional to their position, so q_m . k_n depends only on
m - n. Frequencies theta_i = base^(-2i/d). The scaling variants real checkpoints use change the
frequencies (and sometimes scale cos/sin by an "attention factor"):
  linear  - positions divided by `factor` (Chen et al. 2023, position interpolation)
  dynamic - NTK-aware base growth once the sequence is longer than the trained context
  llama3  - per-wavelength blend of scaled and unscaled frequencies (Llama 3.1)
  yarn    - ramp between interpolation and extrapolation + attention factor (Peng et al. 2023)
  longrope- per-dimension rescale factors, short or long set by sequence length (Phi-3)
The numbers follow transformers' `modeling_rope_utils` so checkpoints load with equal logits.
Halves are rotated with the `rotate_half` layout (Llama/GPT-NeoX), not interleaved pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ocellus.errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class RopeConfig:
    head_dim: int
    theta: float = 10000.0
    rope_type: str = "default"
    partial_rotary_factor: float = 1.0
    max_position_embeddings: int = 2048
    params: dict = field(default_factory=dict)  # factor, low_freq_factor, beta_fast, ... as in HF

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(f"unknown rope type {self.rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
        needs = {"linear": ["factor"], "dynamic": ["factor"], "yarn": [],
                 "llama3": ["factor", "low_freq_factor", "high_freq_factor"],
                 "longrope": ["short_factor", "long_factor"]}.get(self.rope_type, [])
        missing = [k for k in needs if self.params.get(k) is None]
        if missing:
            raise ConfigError(f"rope type {self.rope_type!r} needs {missing} in rope_parameters/rope_scaling")
        if self.rope_type == "yarn" and self.params.get("factor") is None and "original_max_position_embeddings" not in self.params:
            raise ConfigError("rope type 'yarn' needs 'factor' or 'original_max_position_embeddings'")
        if self.rope_type == "longrope":   # one factor per rotated frequency: another length broadcasts or fails
            for key in ("short_factor", "long_factor"):
                value = self.params[key]
                if not isinstance(value, (list, tuple)) or len(value) != self.rotary_dim // 2:
                    raise ConfigError(f"rope {key} must list {self.rotary_dim // 2} numbers (one per frequency of the "
                                      f"{self.rotary_dim} rotated dims), got {value!r}")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def original_max_position_embeddings(self) -> int:
        return int(self.params.get("original_max_position_embeddings") or self.max_position_embeddings)

    @classmethod
    def from_hf(cls, cfg: dict, head_dim: int) -> "RopeConfig":
        """Read transformers 5.x `rope_parameters` or 4.x `rope_theta` + `rope_scaling` (which wins where a config.json
        has both, as transformers' config reads it)."""
        params = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
        rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
        if rope_type == "mrope":  # Qwen2-VL's 4.x configs: default frequencies; mrope_section stays in params
            rope_type = "default"
        theta = params.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0
        prf = params.pop("partial_rotary_factor", None) or cfg.get("partial_rotary_factor") or 1.0
        if "original_max_position_embeddings" in cfg and rope_type in ("llama3", "yarn", "longrope"):
            # transformers' config gives a top-level value (Phi-3's place for it) priority over the rope dict's
            params["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        return cls(head_dim=head_dim, theta=float(theta), rope_type=rope_type, partial_rotary_factor=float(prf),
                   max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)), params=params)


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  # [dim/2]


def rope_frequencies(cfg: RopeConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """-> (inv_freq [rotary_dim/2], attention_factor). seq_len matters for dynamic/longrope only."""
    dim, base, p = cfg.rotary_dim, cfg.theta, cfg.params
    if cfg.rope_type == "default":
        return _base_inv_freq(base, dim), 1.0
    if cfg.rope_type == "linear":
        return _base_inv_freq(base, dim) / p["factor"], 1.0
    if cfg.rope_type == "dynamic":
        trained = cfg.max_position_embeddings
        seq_len = max(seq_len or trained, trained)
        f = p["factor"]
        base = base * ((f * seq_len / trained) - (f - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(base, dim), 1.0
    if cfg.rope_type == "llama3":
        inv = _base_inv_freq(base, dim)
        f, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_ctx = cfg.original_max_position_embeddings
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old_ctx / lo, inv / f, inv)          # long waves: interpolate
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / f + smooth * scaled
        medium = (wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo)
        return torch.where(medium, blended, scaled), 1.0
    if cfg.rope_type == "yarn":
        return _yarn(cfg)
    return _longrope(cfg, seq_len)


def _yarn(cfg: RopeConfig) -> tuple[torch.Tensor, float]:
    dim, base, p = cfg.rotary_dim, cfg.theta, cfg.params
    orig = cfg.original_max_position_embeddings
    factor = p.get("factor") or cfg.max_position_embeddings / orig

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = p.get("attention_factor")
    if attn is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attn = float(mscale(factor, m) / mscale(factor, m_all)) if (m and m_all) else mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):  # the dimension whose wavelength makes `rotations` turns in `orig` tokens
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolate = 1 - ramp                       # 1 for high-frequency dims: keep them as trained
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv, attn


def _longrope(cfg: RopeConfig, seq_len: int | None) -> tuple[torch.Tensor, float]:
    dim, p = cfg.rotary_dim, cfg.params
    orig = cfg.original_max_position_embeddings
    factor = p.get("factor") or cfg.max_position_embeddings / orig
    attn = p.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    ext = torch.tensor(p["long_factor"] if (seq_len and seq_len > orig) else p["short_factor"], dtype=torch.float32)
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext * cfg.theta ** shape), attn


class CosSin(tuple):
    """(cos, sin) [B, T, R]: what RotaryEmbedding returns, a plain pair to every reader, which also keeps the form
    `rotate` applies (made on the first call, then shared by every layer of the step that reads this pair)."""

    def __new__(cls, cos: torch.Tensor, sin: torch.Tensor):
        return super().__new__(cls, (cos, sin))

    def rolled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin with its first half negated), each [B, 1, T, R]: rotate_half(x) * sin == roll(x) * that."""
        if "_rolled" not in self.__dict__:
            cos, sin = self
            h = sin.shape[-1] // 2
            self._rolled = cos.unsqueeze(1), torch.cat((-sin[..., :h], sin[..., h:]), dim=-1).unsqueeze(1)
        return self._rolled


class RotaryEmbedding(nn.Module):
    """position_ids [B, T] -> CosSin: (cos, sin) [B, T, rotary_dim] in the dtype asked for."""

    def __init__(self, cfg: RopeConfig):
        super().__init__()
        self.cfg = cfg
        inv_freq, self.attention_scaling = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # the length inv_freq was computed for: rope_frequencies without a seq_len gives dynamic's trained context
        # and longrope's short set (lengths up to the original context), which a longer sequence must swap out
        self._freq_seq_len = (cfg.original_max_position_embeddings if cfg.rope_type == "longrope"
                              else cfg.max_position_embeddings)

    def _maybe_rescale(self, position_ids: torch.Tensor) -> None:
        # dynamic NTK grows the base past the trained context and resets below it; longrope swaps
        # short/long factor sets at the original context length.
        seq_len = int(position_ids.max()) + 1
        trained = self.cfg.max_position_embeddings
        if self.cfg.rope_type == "dynamic":
            if seq_len > self._freq_seq_len:
                new_len = seq_len
            elif seq_len < trained and self._freq_seq_len > trained:
                new_len = trained
            else:
                return
        else:  # longrope
            orig = self.cfg.original_max_position_embeddings
            new_len = orig + 1 if seq_len > orig else orig
            if (new_len > orig) == (self._freq_seq_len > orig):
                return
        inv, self.attention_scaling = rope_frequencies(self.cfg, seq_len=new_len)
        self.inv_freq = inv.to(self.inv_freq.device)
        self._freq_seq_len = new_len

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32):
        if self.cfg.rope_type in ("dynamic", "longrope"):
            self._maybe_rescale(position_ids)
        freqs = position_ids[..., None].float() * self.inv_freq.float()    # [B, T, rot/2]
        emb = torch.cat((freqs, freqs), dim=-1)                            # [B, T, rot]
        cos, sin = emb.cos(), emb.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return CosSin(cos.to(dtype), sin.to(dtype))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, T, R] with R <= D: rotate the first R dims, pass the rest."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                          # [B, 1, T, R]
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """apply_rotary(x, *rope), bitwise (negating is exact), in half the ops: x * cos + roll(x, R/2) * sin',
    sin' = sin with its first half negated, both made once per CosSin (a plain pair: made here). Per-op cost
    bounds a small model's decode step on CPU, so the decode path rotates this way."""
    cos, sin = (rope if isinstance(rope, CosSin) else CosSin(*rope)).rolled()   # [B, 1, T, R]
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + x.roll(rot // 2, -1) * sin
    x_rot = x[..., :rot]
    return torch.cat((x_rot * cos + x_rot.roll(rot // 2, -1) * sin, x[..., rot:]), dim=-1)
