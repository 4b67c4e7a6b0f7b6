"""InternViT: the vision tower of InternVL (Chen et al. 2024, "InternVL: Scaling up Vision Foundation
Models and Aligning for Generic Visual-Linguistic Tasks"; InternVL-1.5/2/3 use InternViT-300M/6B).

A pre-norm ViT like CLIP's, with three differences that keep it out of models/vision/vit.py:
  - LayerScale (Touvron et al. 2021, CaiT): each residual branch is scaled by a learned vector,
        x = x + lambda_1 * Attn(LN(x));  x = x + lambda_2 * MLP(LN(x))
  - optional QK-norm (InternViT-6B): RMSNorm over the whole q and k projections, before the head split;
  - no pre-LayerNorm on the embeddings; a final LayerNorm over every token unless use_mean_pooling,
    and LayerNorm or RMSNorm blocks (norm_type).
Matches transformers' InternVLVisionModel (tests/parity/test_internvl_parity.py). Module names equal
transformers' (embeddings.cls_token, encoder.layer.{i}.attention.projection_layer, lambda_1, ...), so
the checkpoint key table is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.nn.attention import attend
from ocellus.models.vision.vit import ViTDims
from ocellus.nn.mlp import GeluMLP
from ocellus.nn.norms import LayerNorm, RMSNorm
from ocellus.nn.positional import resize_grid

NORMS = {"layer_norm": LayerNorm, "rms_norm": RMSNorm}


def _square(value, name: str) -> int:
    """transformers stores image_size / patch_size as [h, w]; InternViT tiles are square."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"InternViT {name} must be square, got {list(value)}")
        value = value[0]
    return value


# transformers' InternVLVisionConfig defaults (InternViT-300M), used for fields a config.json leaves out
_HF_DEFAULTS = dict(image_size=448, patch_size=14, num_channels=3, hidden_size=1024, intermediate_size=4096,
                    num_hidden_layers=24, num_attention_heads=16, layer_norm_eps=1e-6, hidden_act="gelu",
                    attention_bias=False, use_qk_norm=False, norm_type="layer_norm", use_mean_pooling=True,
                    use_absolute_position_embeddings=True, use_mask_token=False, layer_scale_init_value=0.1)


@dataclass(frozen=True)
class InternViTConfig(ViTDims):
    """A ViT's numbers (ViTDims: every ViT's names, defaults and checks) + InternViT's layout."""
    attention_bias: bool = False          # bias on q/k/v (the output projection always has one)
    use_qk_norm: bool = False
    norm_type: str = "layer_norm"         # or "rms_norm"
    use_mean_pooling: bool = True         # False: a final `layernorm` over every token
    use_absolute_position_embeddings: bool = True
    use_mask_token: bool = False          # a masked-image-modelling token: kept for round trips, unused here
    layer_scale_init_value: float = 0.1
    hf: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if self.norm_type not in NORMS:
            raise ConfigError(f"InternViT norm_type={self.norm_type!r}; supported: {sorted(NORMS)}")

    @classmethod
    def from_hf(cls, cfg: dict) -> "InternViTConfig":
        """An InternVLVisionConfig dict (transformers' defaults for the fields it leaves out)."""
        c = {**_HF_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
        return cls(image_size=_square(c["image_size"], "image_size"), patch_size=_square(c["patch_size"], "patch_size"),
                   num_channels=c["num_channels"], hidden_size=c["hidden_size"],
                   intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
                   num_heads=c["num_attention_heads"], layer_norm_eps=c["layer_norm_eps"], hidden_act=c["hidden_act"],
                   attention_bias=bool(c["attention_bias"]), use_qk_norm=bool(c["use_qk_norm"]),
                   norm_type=c["norm_type"], use_mean_pooling=bool(c["use_mean_pooling"]),
                   use_absolute_position_embeddings=bool(c["use_absolute_position_embeddings"]),
                   use_mask_token=bool(c["use_mask_token"]),
                   layer_scale_init_value=float(c["layer_scale_init_value"]), hf=dict(cfg))

    def to_hf(self) -> dict:
        out = {k: v for k, v in self.hf.items() if k not in ("architectures", "torch_dtype", "dtype")}
        out.update(model_type="internvl_vision", image_size=[self.image_size] * 2, patch_size=[self.patch_size] * 2,
                   num_channels=self.num_channels, hidden_size=self.hidden_size,
                   intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                   num_attention_heads=self.num_heads, layer_norm_eps=self.layer_norm_eps, hidden_act=self.hidden_act,
                   attention_bias=self.attention_bias, use_qk_norm=self.use_qk_norm, norm_type=self.norm_type,
                   use_mean_pooling=self.use_mean_pooling,
                   use_absolute_position_embeddings=self.use_absolute_position_embeddings,
                   use_mask_token=self.use_mask_token, layer_scale_init_value=self.layer_scale_init_value)
        return out


class PatchEmbeddings(nn.Module):
    def __init__(self, cfg: InternViTConfig):
        super().__init__()
        p = cfg.patch_size
        self.projection = nn.Conv2d(cfg.num_channels, cfg.hidden_size, kernel_size=p, stride=p)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        w = self.projection.weight
        return self.projection(pixel_values.to(w.dtype)).flatten(2).transpose(1, 2)  # [N, P, D], row-major


class Embeddings(nn.Module):
    """[CLS ; patches] + absolute positions, resized bicubically for other tile sizes."""

    def __init__(self, cfg: InternViTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.use_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.patch_embeddings = PatchEmbeddings(cfg)
        self.position_embeddings = (nn.Parameter(torch.zeros(1, cfg.grid ** 2 + 1, D))
                                    if cfg.use_absolute_position_embeddings else None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _, _, H, W = pixel_values.shape
        x = self.patch_embeddings(pixel_values)                                    # [N, P, D]
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)  # [N, 1 + P, D]
        if self.position_embeddings is None:
            return x
        return x + self.positions(H // self.cfg.patch_size, W // self.cfg.patch_size)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """[1, 1 + h*w, D]. Like transformers, the table is used as is when the patch count is the
        native one and the image square; otherwise its grid part is resized (bicubic, DINO's recipe)."""
        table = self.position_embeddings                                           # [1, 1 + G*G, D]
        if h * w == self.cfg.grid ** 2 and h == w:
            return table
        grid = resize_grid(table[0, 1:], (h, w))                                   # [h*w, D]
        return torch.cat([table[:, :1], grid[None]], dim=1)                        # [1, 1 + h*w, D]


class Attention(nn.Module):
    """Bidirectional MHA; QK-norm (when on) normalises the full q / k projections before the head split."""

    def __init__(self, cfg: InternViTConfig):
        super().__init__()
        D, self.num_heads = cfg.hidden_size, cfg.num_heads
        self.q_proj = nn.Linear(D, D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(D, D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(D, D, bias=cfg.attention_bias)
        self.projection_layer = nn.Linear(D, D)
        self.q_norm = RMSNorm(D) if cfg.use_qk_norm else nn.Identity()
        self.k_norm = RMSNorm(D) if cfg.use_qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        H = self.num_heads
        q = self.q_norm(self.q_proj(x)).view(N, T, H, D // H).transpose(1, 2)     # [N, H, T, Dh]
        k = self.k_norm(self.k_proj(x)).view(N, T, H, D // H).transpose(1, 2)     # [N, H, T, Dh]
        v = self.v_proj(x).view(N, T, H, D // H).transpose(1, 2)                  # [N, H, T, Dh]
        y = attend(q, k, v, None, is_causal=False)                                 # [N, H, T, Dh]
        return self.projection_layer(y.transpose(1, 2).reshape(N, T, D))


class Layer(nn.Module):
    """x + lambda_1 * Attn(norm(x)), then x + lambda_2 * MLP(norm(x)): LayerScale on both branches."""

    def __init__(self, cfg: InternViTConfig):
        super().__init__()
        D, Norm = cfg.hidden_size, NORMS[cfg.norm_type]
        self.layernorm_before = Norm(D, eps=cfg.layer_norm_eps)
        self.attention = Attention(cfg)
        self.layernorm_after = Norm(D, eps=cfg.layer_norm_eps)
        self.mlp = GeluMLP(D, cfg.intermediate_size, act=cfg.hidden_act)
        # torch.full, not nn.init: checkpoint loading skips nn.init, and this costs nothing
        self.lambda_1 = nn.Parameter(torch.full((D,), cfg.layer_scale_init_value))
        self.lambda_2 = nn.Parameter(torch.full((D,), cfg.layer_scale_init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.lambda_1 * self.attention(self.layernorm_before(x))
        return x + self.lambda_2 * self.mlp(self.layernorm_after(x))


class Encoder(nn.Module):
    def __init__(self, cfg: InternViTConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))


class InternViT(nn.Module):
    def __init__(self, cfg: InternViTConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.layernorm = None if cfg.use_mean_pooling else LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.gradient_checkpointing = False
        # a from-scratch tower starts with small learned vectors (transformers zeros them, for loading)
        nn.init.normal_(self.embeddings.cls_token, std=0.02)
        if self.embeddings.position_embeddings is not None:
            nn.init.normal_(self.embeddings.position_embeddings, std=0.02)

    def num_tokens(self, height: int, width: int, strategy: str = "default") -> int:
        p = self.config.patch_size
        return (height // p) * (width // p) + int(strategy == "full")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """-> last_hidden_state [N, 1 + P, D] (after the final LayerNorm, when the tower has one)."""
        return self.features(pixel_values, layer=-1, strategy="full")

    def features(self, pixel_values: torch.Tensor, layer: int = -1, strategy: str = "default") -> torch.Tensor:
        """Hidden state `layer` for a VLM, as transformers' InternVL reads it: -1 is last_hidden_state
        (after `layernorm` when use_mean_pooling is off), any other index is hidden_states[layer]
        (0 = the embeddings, i = block i's output, never normed). 'default' drops CLS.
        -> [N, P(+1), D]"""
        if strategy not in ("default", "full"):
            raise ConfigError(f"feature select strategy {strategy!r}; use 'default' (drop CLS) or 'full' (keep it)")
        L = self.config.num_layers
        if not isinstance(layer, int) or not -(L + 1) <= layer <= L:
            raise ConfigError(f"feature layer {layer!r} out of range: InternViT has {L + 1} hidden states "
                              f"(indices {-(L + 1)}..{L})")
        self._check_pixels(pixel_values)
        x = self.embeddings(pixel_values)                                          # [N, 1 + P, D]
        for block in self.encoder.layer[:layer % (L + 1)]:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if layer == -1 and self.layernorm is not None:
            x = self.layernorm(x)
        return x[:, 1:] if strategy == "default" else x

    def _check_pixels(self, pixel_values) -> None:
        cfg = self.config
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 \
                or pixel_values.shape[1] != cfg.num_channels or not pixel_values.is_floating_point():
            got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise InputError(f"pixel_values must be a float tensor [N, {cfg.num_channels}, H, W], got {got}")
        H, W = pixel_values.shape[-2:]
        if H % cfg.patch_size or W % cfg.patch_size:
            raise InputError(f"image size {H}x{W} is not divisible by InternViT's patch_size {cfg.patch_size}")
