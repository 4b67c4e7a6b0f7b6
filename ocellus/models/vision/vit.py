"""Vision Transformer: the image encoder of CLIP and SigLIP (and of LLaVA-style VLMs built on them).

ViT (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words"): cut the image into p x p patches,
embed each linearly, add learned position embeddings (plus a CLS token), run pre-norm transformer
blocks. CLIP's image tower (Radford et al. 2021) adds a LayerNorm before the blocks and pools the
CLS token; SigLIP's (Zhai et al. 2023) has no CLS token and pools with a multihead attention
"probe" (MAP head). Matches transformers' CLIPVisionModel / SiglipVisionModel outputs
(last_hidden_state, pooler_output, every hidden state) including bicubic position-embedding
interpolation; see tests/parity/test_vit_parity.py. Checkpoint names are mapped by the key table
in ocellus/models/families/vit/checkpoint.py.

    CLIP:   x = pre_ln(patches + cls + pos) -> blocks -> last;  pooled = post_ln(last[:, 0])
    SigLIP: x = patches + pos               -> blocks -> last = post_ln(.);  pooled = MAP(last)
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.nn.attention import Attention
from ocellus.nn.mlp import ACTIVATIONS, GeluMLP
from ocellus.nn.norms import LayerNorm

POOLINGS = ("cls", "map", "mean", "none")

# transformers' defaults, used for fields a config.json leaves out (nested configs are saved as diffs)
_HF_DEFAULTS = {
    "clip_vision_model": dict(image_size=224, patch_size=32, num_channels=3, hidden_size=768, intermediate_size=3072,
                              num_hidden_layers=12, num_attention_heads=12, layer_norm_eps=1e-5,
                              hidden_act="quick_gelu"),
    "siglip_vision_model": dict(image_size=224, patch_size=16, num_channels=3, hidden_size=768,
                                intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", vision_use_head=True),
}
# LlavaConfig() without a vision_config builds this CLIP ViT-L/14-336
_LLAVA_DEFAULT_VISION = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                             patch_size=14, image_size=336, num_hidden_layers=24, num_attention_heads=16)
_COMPOSITES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "llava": "clip_vision_model"}


@dataclass(frozen=True)
class ViTDims:
    """The numbers of a ViT (and their checks): ViTConfig's and InternViT's (models/vision/intern_vit.py), towers
    that differ in layout, not in what these numbers are or must obey."""
    image_size: int = 224            # the native (square) resolution the position embeddings were trained at
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"

    def __post_init__(self):
        positive_ints(self, ("image_size", "patch_size", "num_channels", "hidden_size", "intermediate_size",
                             "num_layers", "num_heads"), "vision config field {!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"unknown hidden_act {self.hidden_act!r}; supported: {sorted(ACTIVATIONS)}")

    @property
    def grid(self) -> int:
        """Patches per side at the native resolution."""
        return self.image_size // self.patch_size

    def dims(self) -> dict:
        """These numbers by name (what ViTConfig.clip / .siglip take as keywords)."""
        return {f.name: getattr(self, f.name) for f in fields(ViTDims)}


@dataclass(frozen=True)
class ViTConfig(ViTDims):
    use_cls_token: bool = True       # CLIP: yes; SigLIP: no
    pre_layernorm: bool = False      # CLIP's `pre_layrnorm` (sic) on the embeddings
    post_layernorm: bool = True
    post_norm_on: str = "pooled"     # "pooled": norm only the pooled vector (CLIP); "sequence": every token (SigLIP)
    pooling: str = "cls"             # "cls" token | "map" attention-pooling head (SigLIP) | "mean" of patches | "none"
    patch_embed: str = "conv"        # "conv" (Conv2d, stride p) or "linear" (same maths on unfolded patches)
    patch_bias: bool = True          # CLIP's patch conv has no bias, SigLIP's has
    hf: dict = field(default_factory=dict, compare=False, repr=False)  # source vision config, kept for save

    def __post_init__(self):
        super().__post_init__()
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling={self.pooling!r}; supported: {POOLINGS}")
        if self.pooling == "cls" and not self.use_cls_token:
            raise ConfigError("pooling='cls' needs use_cls_token=True")
        if self.post_norm_on not in ("pooled", "sequence"):
            raise ConfigError(f"post_norm_on={self.post_norm_on!r}; use 'pooled' (CLIP) or 'sequence' (SigLIP)")
        if self.patch_embed not in ("conv", "linear"):
            raise ConfigError(f"patch_embed={self.patch_embed!r}; use 'conv' or 'linear'")

    @classmethod
    def clip(cls, **kw) -> "ViTConfig":
        """CLIP's image tower layout; numbers from kw."""
        return cls(**{**dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, use_cls_token=True, pre_layernorm=True,
                             post_layernorm=True, post_norm_on="pooled", pooling="cls", patch_bias=False), **kw})

    @classmethod
    def siglip(cls, use_head: bool = True, **kw) -> "ViTConfig":
        """SigLIP's image tower layout; numbers from kw."""
        return cls(**{**dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, use_cls_token=False,
                             pre_layernorm=False, post_layernorm=True, post_norm_on="sequence",
                             pooling="map" if use_head else "none", patch_bias=True), **kw})

    @classmethod
    def from_hf(cls, cfg: dict) -> "ViTConfig":
        """A CLIPVisionConfig / SiglipVisionConfig dict, or a composite config (CLIPConfig, SiglipConfig,
        LlavaConfig) whose `vision_config` describes the tower."""
        top_type = cfg.get("model_type")
        if "vision_config" in cfg or top_type in _COMPOSITES:
            sub = cfg.get("vision_config")
            if sub is None:
                if top_type != "llava":
                    raise ConfigError(f"{top_type} config has no vision_config")
                sub = _LLAVA_DEFAULT_VISION
            sub = {"model_type": _COMPOSITES.get(top_type), **sub}
        else:
            sub = cfg
        kind = sub.get("model_type")
        if kind is None:  # a bare vision config without model_type: recognise it by its class name
            archs = " ".join(cfg.get("architectures") or [])
            kind = "siglip_vision_model" if "Siglip" in archs else "clip_vision_model" if "CLIP" in archs else None
        if kind not in _HF_DEFAULTS:
            raise ConfigError(f"unsupported vision tower model_type {kind!r}; supported: {sorted(_HF_DEFAULTS)}")
        c = {**_HF_DEFAULTS[kind], **{k: v for k, v in sub.items() if v is not None}}
        nums = dict(image_size=c["image_size"], patch_size=c["patch_size"], num_channels=c["num_channels"],
                    hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                    num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                    layer_norm_eps=c["layer_norm_eps"], hidden_act=c["hidden_act"], hf=dict(sub))
        if kind == "clip_vision_model":
            return cls.clip(**nums)
        return cls.siglip(use_head=bool(c["vision_use_head"]), **nums)

    def hf_kind(self) -> str:
        """'clip_vision_model' or 'siglip_vision_model': which transformers class this layout is."""
        if self == ViTConfig.clip(**self.dims()):
            return "clip_vision_model"
        if self == ViTConfig.siglip(use_head=self.pooling == "map", **self.dims()):
            return "siglip_vision_model"
        raise ConfigError(f"this ViT layout (cls={self.use_cls_token}, pre_layernorm={self.pre_layernorm}, "
                          f"pooling={self.pooling!r}, post_norm_on={self.post_norm_on!r}, patch_embed="
                          f"{self.patch_embed!r}, patch_bias={self.patch_bias}) is neither CLIP's nor SigLIP's "
                          "image tower, so transformers has no config for it")

    def to_hf(self) -> dict:
        """config.json of a CLIPVisionModel / SiglipVisionModel: the source config with our fields over it."""
        kind = self.hf_kind()
        out = {k: v for k, v in self.hf.items() if k not in ("architectures", "torch_dtype")}
        out.update(architectures=["CLIPVisionModel" if kind == "clip_vision_model" else "SiglipVisionModel"],
                   model_type=kind, image_size=self.image_size, patch_size=self.patch_size,
                   num_channels=self.num_channels, hidden_size=self.hidden_size,
                   intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                   num_attention_heads=self.num_heads, layer_norm_eps=self.layer_norm_eps,
                   hidden_act=self.hidden_act)
        if kind == "siglip_vision_model":
            out["vision_use_head"] = self.pooling == "map"
        return out


@dataclass
class VisionOutput:
    last_hidden_state: torch.Tensor                       # [N, P(+1), D]; SigLIP: after post_layernorm
    pooler_output: torch.Tensor | None = None             # [N, D]; None with pooling="none"
    hidden_states: tuple[torch.Tensor, ...] | None = None  # L + 1 entries: blocks' input, then each block's output


class PatchEmbeddings(nn.Module):
    """pixels [N, C, H, W] -> tokens [N, P(+1), D]: patch projection, CLS token, position embeddings."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        p, D = cfg.patch_size, cfg.hidden_size
        if cfg.patch_embed == "conv":
            self.patch_embedding = nn.Conv2d(cfg.num_channels, D, kernel_size=p, stride=p, bias=cfg.patch_bias)
        else:  # weight [D, C*p*p] = the conv weight flattened, since patches are unfolded in (C, p, p) order
            self.patch_embedding = nn.Linear(cfg.num_channels * p * p, D, bias=cfg.patch_bias)
        if cfg.use_cls_token:
            self.class_embedding = nn.Parameter(torch.empty(D))
        self.position_embedding = nn.Embedding(cfg.grid ** 2 + int(cfg.use_cls_token), D)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        N, C, H, W = pixel_values.shape
        p = self.cfg.patch_size
        w = self.patch_embedding.weight
        x = pixel_values.to(w.dtype)
        if self.cfg.patch_embed == "conv":
            x = self.patch_embedding(x).flatten(2).transpose(1, 2)                # [N, P, D], row-major patches
        else:
            x = x.reshape(N, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)    # [N, h, w, C, p, p]
            x = self.patch_embedding(x.reshape(N, (H // p) * (W // p), C * p * p))  # [N, P, D]
        if self.cfg.use_cls_token:
            cls = self.class_embedding.to(x.dtype).expand(N, 1, -1)                # [N, 1, D]
            x = torch.cat([cls, x], dim=1)                                         # [N, 1 + P, D]
        return x + self.positions(H // p, W // p, interpolate_pos_encoding)

    def positions(self, h: int, w: int, interpolate: bool) -> torch.Tensor:
        """Position embeddings for an h x w patch grid: [1, h*w(+1), D]. The learned table covers the
        native grid; other grids get it resized bicubically (DINO's recipe, as transformers does).
        Like transformers, a square grid of the native size uses the table as is."""
        table = self.position_embedding.weight                                     # [G*G(+1), D]
        g, D = self.cfg.grid, table.shape[-1]
        if not interpolate or (h == w == g):
            return table[None]                                                     # [1, G*G(+1), D]
        n_cls = int(self.cfg.use_cls_token)
        cls, grid = table[:n_cls], table[n_cls:]
        grid = grid.reshape(1, g, g, D).permute(0, 3, 1, 2)                        # [1, D, G, G]
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)  # [1, D, h, w]
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, D)                       # [1, h*w, D]
        return torch.cat([cls[None], grid], dim=1)                                 # [1, h*w(+1), D]


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). Bidirectional attention by
    default; CLIP's text tower (ocellus/models/text/clip_text.py) builds it causal and passes a padding
    mask. `cfg` needs hidden_size, num_heads, intermediate_size, layer_norm_eps and hidden_act."""

    def __init__(self, cfg: ViTConfig, layer_idx: int, causal: bool = False):
        super().__init__()
        self.layer_norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, qkv_bias=True, out_bias=True,
                                   layer_idx=layer_idx, causal=causal)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = GeluMLP(cfg.hidden_size, cfg.intermediate_size, act=cfg.hidden_act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask=mask)
        return x + self.mlp(self.layer_norm2(x))


class AttentionPoolingHead(nn.Module):
    """Multihead attention pooling ("MAP", Zhai et al. 2022; SigLIP's `head`): one learned probe query
    attends over all tokens, then a residual MLP. torch's MultiheadAttention keeps the checkpoint's
    packed in_proj_weight/in_proj_bias/out_proj names."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        D = cfg.hidden_size
        self.probe = nn.Parameter(torch.empty(1, 1, D))
        self.attention = nn.MultiheadAttention(D, cfg.num_heads, batch_first=True)
        self.layernorm = LayerNorm(D, eps=cfg.layer_norm_eps)
        self.mlp = GeluMLP(D, cfg.intermediate_size, act=cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)                              # [N, 1, D]
        y = self.attention(probe, x, x, need_weights=False)[0]                     # [N, 1, D]
        y = y + self.mlp(self.layernorm(y))
        return y[:, 0]                                                             # [N, D]


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        D = cfg.hidden_size
        self.embeddings = PatchEmbeddings(cfg)
        self.pre_layernorm = LayerNorm(D, eps=cfg.layer_norm_eps) if cfg.pre_layernorm else None
        self.layers = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.num_layers))
        self.post_layernorm = LayerNorm(D, eps=cfg.layer_norm_eps) if cfg.post_layernorm else None
        self.head = AttentionPoolingHead(cfg) if cfg.pooling == "map" else None
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self):
        # the learned vectors start small, as in ViT/CLIP, so a model trained from scratch starts near
        # "patch content only"; nn.init is looked up at call time so checkpoint loading can skip it
        nn.init.normal_(self.embeddings.position_embedding.weight, std=0.02)
        if self.config.use_cls_token:
            nn.init.normal_(self.embeddings.class_embedding, std=0.02)
        if self.head is not None:
            nn.init.normal_(self.head.probe, std=0.02)

    # -- sizes -----------------------------------------------------------------------------------
    def num_patches(self, height: int, width: int) -> int:
        """Patch tokens for an image of height x width pixels (no CLS)."""
        p = self.config.patch_size
        if height % p or width % p:
            raise InputError(f"image size {height}x{width} is not divisible by patch_size {p}")
        return (height // p) * (width // p)

    def num_tokens(self, height: int, width: int, strategy: str = "default") -> int:
        """Tokens `features(..., strategy)` yields per image: patches, plus CLS with 'full'."""
        _check_strategy(strategy)
        return self.num_patches(height, width) + int(strategy == "full" and self.config.use_cls_token)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False,
                interpolate_pos_encoding: bool = False) -> VisionOutput:
        hidden = self._encode(pixel_values, self.config.num_layers, interpolate_pos_encoding, keep=output_hidden_states)
        last = hidden[-1]                                                          # [N, P(+1), D]
        cfg = self.config
        if self.post_layernorm is not None and cfg.post_norm_on == "sequence":
            last = self.post_layernorm(last)
        if cfg.pooling == "cls":
            pooled = last[:, 0]                                                    # [N, D]
        elif cfg.pooling == "map":
            pooled = self.head(last)
        elif cfg.pooling == "mean":
            pooled = last[:, int(cfg.use_cls_token):].mean(dim=1)                  # [N, D] over patches only
        else:
            pooled = None
        if pooled is not None and self.post_layernorm is not None and cfg.post_norm_on == "pooled":
            pooled = self.post_layernorm(pooled)
        return VisionOutput(last_hidden_state=last, pooler_output=pooled,
                            hidden_states=tuple(hidden) if output_hidden_states else None)

    def features(self, pixel_values: torch.Tensor, layer: int | list[int] | tuple[int, ...] = -2,
                 strategy: str = "default", interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Image features for a VLM (LLaVA's `vision_feature_layer` / `vision_feature_select_strategy`):
        hidden state `layer` (index into forward's hidden_states, negative from the end), or several
        concatenated on the channel dim. 'default' drops the CLS token (when the tower has one), 'full'
        keeps it. Only the blocks up to the deepest selected layer run.
        -> [N, P(+1), D * len(layers)]"""
        _check_strategy(strategy)
        layers = [layer] if isinstance(layer, int) else list(layer)
        L = self.config.num_layers
        if not layers or any(not isinstance(i, int) or not -(L + 1) <= i <= L for i in layers):
            raise ConfigError(f"feature layer(s) {layer!r} out of range: this tower has {L + 1} hidden states "
                              f"(indices {-(L + 1)}..{L})")
        idx = [i % (L + 1) for i in layers]
        hidden = self._encode(pixel_values, max(idx), interpolate_pos_encoding, keep=True)
        chosen = [hidden[i] for i in idx]                                          # each [N, P(+1), D]
        if strategy == "default" and self.config.use_cls_token:
            chosen = [h[:, 1:] for h in chosen]                                    # [N, P, D]
        return chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=-1)        # [N, P(+1), D*k]

    def _encode(self, pixel_values: torch.Tensor, depth: int, interpolate: bool, keep: bool) -> list[torch.Tensor]:
        """Embeddings and the first `depth` blocks. Returns every hidden state when keep, else only the last."""
        self._check_pixels(pixel_values, interpolate)
        x = self.embeddings(pixel_values, interpolate)                             # [N, P(+1), D]
        if self.pre_layernorm is not None:
            x = self.pre_layernorm(x)
        hidden = [x]
        for block in self.layers[:depth]:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if keep:
                hidden.append(x)
            else:
                hidden[0] = x
        return hidden

    def _check_pixels(self, pixel_values, interpolate: bool) -> None:
        cfg = self.config
        if not isinstance(pixel_values, torch.Tensor):
            raise InputError(f"pixel_values must be a torch.Tensor [N, {cfg.num_channels}, H, W], "
                             f"got {type(pixel_values).__name__}")
        shape = tuple(pixel_values.shape)
        if pixel_values.dim() != 4:
            raise InputError(f"pixel_values must be 4-D [N, {cfg.num_channels}, H, W]; got shape {shape}")
        if not pixel_values.is_floating_point():
            raise InputError(f"pixel_values must be floating point (normalised by the image processor); "
                             f"got {pixel_values.dtype} of shape {shape}")
        _, C, H, W = shape
        if C != cfg.num_channels:
            raise InputError(f"pixel_values has {C} channels (shape {shape}); this vision tower expects "
                             f"{cfg.num_channels}: [N, {cfg.num_channels}, H, W]")
        p, S = cfg.patch_size, cfg.image_size
        if H % p or W % p:
            raise InputError(f"image size {H}x{W} (pixel_values shape {shape}) is not divisible by patch_size "
                             f"{p}; resize or pad to a multiple of {p}")
        if not interpolate and (H, W) != (S, S):
            raise InputError(f"image size {H}x{W} (pixel_values shape {shape}) differs from the model's {S}x{S}; "
                             f"resize, or pass interpolate_pos_encoding=True to resize the position embeddings")


def _check_strategy(strategy: str) -> None:
    if strategy not in ("default", "full"):
        raise ConfigError(f"feature select strategy {strategy!r}; use 'default' (drop CLS) or 'full' (keep it)")


@dataclass
class ClassifierOutput:
    logits: torch.Tensor                 # [N, num_classes]
    loss: torch.Tensor | None = None


class ViTClassifier(nn.Module):
    """An image classifier over any ViT encoder (ViT's own fine-tuning setup): a linear head on the
    encoder's pooled vector (CLIP: the post-normed CLS token; SigLIP: the attention-pooling head) or,
    for a tower without a pooler, on the CLS token / the mean of the patch tokens. Cross-entropy loss
    when labels are given, so an encoder can be trained alone."""

    def __init__(self, encoder: VisionTransformer, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                interpolate_pos_encoding: bool = False) -> ClassifierOutput:
        out = self.encoder(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        if out.pooler_output is not None:
            x = out.pooler_output                                                  # [N, D]
        elif self.encoder.config.use_cls_token:
            x = out.last_hidden_state[:, 0]                                        # [N, D]
        else:
            x = out.last_hidden_state.mean(dim=1)                                  # [N, D]
        logits = self.classifier(x)                                                # [N, K]
        loss = None
        if labels is not None:
            if labels.shape != (logits.shape[0],):
                raise InputError(f"labels must be [N]={logits.shape[0]} class ids; got shape {tuple(labels.shape)}")
            loss = F.cross_entropy(logits, labels)
        return ClassifierOutput(logits=logits, loss=loss)

