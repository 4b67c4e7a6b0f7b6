"""A small diffusion UNet: residual blocks with a timestep embedding, self-attention and
cross-attention to a condition sequence at the low resolutions.

Ronneberger et al. 2015 (UNet); the diffusion variant of Ho et al. 2020 (DDPM, appendix B: wide
ResNet blocks, GroupNorm, sinusoidal timestep embedding added inside every block, self-attention at
16x16) with the cross-attention of Rombach et al. 2022 (latent diffusion, sec. 3.3:
softmax(Q K^T / sqrt(d)) V with Q from the image, K/V from the condition tokens). The layout
follows diffusers' UNet2DConditionModel at toy scale: down levels (res blocks, then a strided conv),
a middle block, up levels concatenating the skips. Class labels or text tokens become the
condition sequence through `Conditioner` (index num_classes is the learned null condition of
classifier-free guidance).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.models.generative.guidance import drop_condition
from ocellus.nn.attention import attend
from ocellus.nn.positional import sinusoidal_encoding


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    channels: int = 32                     # width of level 0; level i has channels * channel_mults[i]
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)   # levels (and the middle block) with self/cross-attention
    num_heads: int = 4
    context_dim: int | None = 64           # condition token width; None: unconditional
    groups: int = 8
    dropout: float = 0.0

    def __post_init__(self):
        if any(self.channels * m % self.groups for m in self.channel_mults):
            raise ConfigError(f"every level width (channels={self.channels} x channel_mults={self.channel_mults}) "
                              f"must be divisible by groups={self.groups}")
        if any(not 0 <= lvl < len(self.channel_mults) for lvl in self.attention_levels):
            raise ConfigError(f"attention_levels {self.attention_levels} must index channel_mults "
                              f"(0..{len(self.channel_mults) - 1})")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)


def check_image_batch(x: torch.Tensor, channels: int, factor: int, what: str) -> torch.Tensor:
    """x must be [B, channels, H, W] with H and W multiples of the model's downsampling factor."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise InputError(f"{what} input must be [B, {channels}, H, W], got {tuple(x.shape)}")
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise InputError(f"{what} input size {tuple(x.shape[-2:])} is not divisible by its downsampling "
                         f"factor {factor}")
    return x


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + time embedding, GroupNorm -> SiLU -> dropout -> conv, + skip."""

    def __init__(self, cin: int, cout: int, groups: int, temb_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_proj is not None:
            h = h + self.time_proj(F.silu(temb))[:, :, None, None]          # [B, C, 1, 1] broadcast
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, then cross-attention to the condition tokens."""

    def __init__(self, dim: int, num_heads: int, groups: int, context_dim: int | None):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.cross = None
        if context_dim:
            self.norm_cross = nn.LayerNorm(dim)
            self.to_q, self.to_kv = nn.Linear(dim, dim), nn.Linear(context_dim, 2 * dim)
            self.cross = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2)      # [B, H, T, Dh]

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, Dh = y.shape
        return y.transpose(1, 2).reshape(B, T, H * Dh)                                # [B, T, D]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)                                   # [B, HW, C]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = self.proj(self._merge(attend(self._heads(q), self._heads(k), self._heads(v), None, False)))
        tokens = x.flatten(2).transpose(1, 2) + h                                     # [B, HW, C]
        if self.cross is not None:
            if context is None:
                raise InputError("this UNet is conditional: pass context [B, S, context_dim]")
            tokens = tokens + self.cross_attend(self.norm_cross(tokens), context, context_mask)
        return tokens.transpose(1, 2).reshape(B, C, H, W)                             # [B, C, H, W]

    def cross_attend(self, h: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        """softmax(Q K^T / sqrt(d) + mask) V, out-projected: Q from image tokens h [B, N, C], K/V from the condition
        tokens context [B, S, Dc]; context_mask [B, S] (1 = token, 0 = padding) keeps padding out of every
        softmax, so a caption's output does not depend on how far its batch was padded. -> [B, N, C]"""
        if context.dim() != 3 or context.shape[-1] != self.to_kv.in_features:
            raise InputError(f"context must be [B, S, {self.to_kv.in_features}], got {tuple(context.shape)}")
        if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise InputError(f"context_mask must be [B, S] = {tuple(context.shape[:2])}, got "
                             f"{tuple(context_mask.shape)}")
        mask = None if context_mask is None else context_mask[:, None, None, :].bool()     # [B, 1, 1, S]
        k, v = self.to_kv(context).chunk(2, dim=-1)
        y = attend(self._heads(self.to_q(h)), self._heads(k), self._heads(v), mask, False)  # [B, H, N, Dh]
        return self.cross(self._merge(y))


class UNet(nn.Module):
    """eps_theta(x_t [B, C, H, W], t [B], context [B, S, Dc]) -> [B, C, H, W]."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, g, temb = cfg.channels, cfg.groups, cfg.channels * 4
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down, skips, cin = nn.ModuleList(), [ch], ch
        for lvl, mult in enumerate(cfg.channel_mults):
            cout = ch * mult
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._block(cin, cout, lvl, temb))
                skips.append(cout)
                cin = cout
            if lvl < len(cfg.channel_mults) - 1:
                self.down.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
                skips.append(cin)
        self.mid = nn.ModuleList([ResBlock(cin, cin, g, temb, cfg.dropout),
                                  AttentionBlock(cin, cfg.num_heads, g, cfg.context_dim),
                                  ResBlock(cin, cin, g, temb, cfg.dropout)])
        self.up = nn.ModuleList()
        for lvl, mult in reversed(list(enumerate(cfg.channel_mults))):
            cout = ch * mult
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(self._block(cin + skips.pop(), cout, lvl, temb))
                cin = cout
            if lvl > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cin, cin, 3, padding=1)))
        self.norm_out, self.conv_out = nn.GroupNorm(g, cin), nn.Conv2d(cin, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)   # start as eps = 0: a calm first loss (as in DDPM's code)
        nn.init.zeros_(self.conv_out.bias)

    def _block(self, cin: int, cout: int, lvl: int, temb: int) -> nn.ModuleList:
        parts = [ResBlock(cin, cout, self.cfg.groups, temb, self.cfg.dropout)]
        if lvl in self.cfg.attention_levels:
            parts.append(AttentionBlock(cout, self.cfg.num_heads, self.cfg.groups, self.cfg.context_dim))
        return nn.ModuleList(parts)

    @staticmethod
    def _run(block, h, temb, context, context_mask):
        if isinstance(block, nn.ModuleList):     # ResBlock (+ AttentionBlock)
            h = block[0](h, temb)
            return block[1](h, context, context_mask) if len(block) > 1 else h
        return block(h)                          # down/up-sampling

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_image_batch(x, self.cfg.in_channels, self.cfg.downsample_factor, "UNet")
        temb = self.time_mlp(sinusoidal_encoding(t, self.cfg.channels).to(x.dtype))   # [B, 4C]
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, temb, context, context_mask)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb), context, context_mask), temb)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)                                 # [B, C + Cskip, H, W]
            h = self._run(block, h, temb, context, context_mask)
        return self.conv_out(F.silu(self.norm_out(h)))


class Conditioner(nn.Module):
    """Class labels [B] -> condition tokens [B, 1, dim] for the cross-attention.

    A table of num_classes + 1 rows; row num_classes is the learned null condition that
    classifier-free guidance swaps in."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes, self.null_id = num_classes, num_classes
        self.class_embed = nn.Embedding(num_classes + 1, dim)

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 1:
            raise InputError(f"class labels must be [B], got shape {tuple(labels.shape)}")
        bad = (labels < 0) | (labels > self.null_id)
        if bad.any():
            raise InputError(f"class label {int(labels[bad][0])} is out of range: this model knows classes "
                             f"0..{self.num_classes - 1} (and {self.null_id} = unconditional)")
        return labels

    def drop(self, labels: torch.Tensor, p: float) -> torch.Tensor:
        """Classifier-free guidance training: each label becomes the null label with probability p."""
        return drop_condition(labels, self.null_id, p)

    def null_like(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.null_id)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_embed(self.check_labels(labels))[:, None]                   # [B, 1, D]
