"""The text towers of CLIP and SigLIP: a pre-LN transformer over token + learned position embeddings,
pooled to one vector per text.

CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision",
sec. 2.4): causal self-attention (so the tower could be used as a LM), final LayerNorm, and the
hidden state at the end-of-text token is the text's feature. SigLIP (Zhai et al. 2023, "Sigmoid Loss
for Language Image Pre-Training"): the same blocks with bidirectional attention, the *last position*
pooled (texts are padded to a fixed length, so that is usually a pad token) and a linear `head`.

Matches transformers 5's CLIPTextModel / CLIPTextModelWithProjection / SiglipTextModel, including
its two EOS rules: a config with eos_token_id == 2 (exported before transformers PR #24773) pools at
argmax(input_ids) (the original CLIP tokenizer gives EOT the highest id); any other eos_token_id
pools at the first position holding it. Unlike transformers (which silently pools position 0),
a row without the EOS token is an InputError. See tests/parity/test_clip_parity.py.

    x = tok_emb(ids) + pos_emb(positions)          [B, T, D]
    x = L x EncoderBlock(x, causal (CLIP) | bidirectional (SigLIP), padding mask)
    last = final_layer_norm(x);  pooled = last[eos position] (CLIP) | head(last[:, -1]) (SigLIP)

The blocks are the image tower's (ocellus/models/vision/vit.py EncoderBlock), so their checkpoint
names (self_attn.out_proj, layer_norm1, mlp.fc1, ...) map through the same rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.models.vision.vit import EncoderBlock
from ocellus.nn.masks import build_attention_mask
from ocellus.nn.mlp import ACTIVATIONS
from ocellus.nn.norms import LayerNorm

LEGACY_EOS_ID = 2   # transformers: a CLIP config with this eos id pools at argmax(input_ids)

# transformers' defaults, used for fields a config.json leaves out
_HF_DEFAULTS = {
    "clip_text_model": dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                            num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=49406, eos_token_id=49407,
                            projection_dim=512),
    "siglip_text_model": dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                              layer_norm_eps=1e-6, pad_token_id=1, bos_token_id=49406, eos_token_id=49407,
                              projection_size=None),
}
_COMPOSITES = {"clip": "clip_text_model", "siglip": "siglip_text_model"}


@dataclass(frozen=True)
class TextTowerConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_layers: int = 12
    num_heads: int = 8
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    causal: bool = True               # CLIP: causal; SigLIP: bidirectional
    pooling: str = "eos"              # "eos" (CLIP) | "last" (SigLIP: the final position, pad or not)
    eos_token_id: int | None = 49407
    head_size: int | None = None      # SigLIP's `head` Linear(D, head_size); None: no head (CLIP)
    hf: dict = field(default_factory=dict, compare=False, repr=False)  # source text config, kept for save

    def __post_init__(self):
        positive_ints(self, ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                             "max_position_embeddings"), "text config field {!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"text hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.pooling not in ("eos", "last"):
            raise ConfigError(f"text pooling={self.pooling!r}; use 'eos' (CLIP) or 'last' (SigLIP)")
        if self.pooling == "eos" and not isinstance(self.eos_token_id, int):
            raise ConfigError(f"text pooling 'eos' needs an integer eos_token_id, got {self.eos_token_id!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"unknown text hidden_act {self.hidden_act!r}; supported: {sorted(ACTIVATIONS)}")

    @classmethod
    def clip(cls, **kw) -> "TextTowerConfig":
        return cls(**{**dict(causal=True, pooling="eos", hidden_act="quick_gelu", layer_norm_eps=1e-5,
                             head_size=None), **kw})

    @classmethod
    def siglip(cls, **kw) -> "TextTowerConfig":
        kw = {**dict(causal=False, pooling="last", hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6), **kw}
        kw.setdefault("head_size", kw.get("hidden_size", cls.hidden_size))
        return cls(**kw)

    @property
    def kind(self) -> str:
        return "clip_text_model" if self.causal else "siglip_text_model"

    @classmethod
    def from_hf(cls, cfg: dict) -> "TextTowerConfig":
        """A CLIPTextConfig / SiglipTextConfig dict, or a CLIPConfig / SiglipConfig whose text_config it reads."""
        top = cfg.get("model_type")
        sub = {"model_type": _COMPOSITES[top], **(cfg.get("text_config") or {})} if top in _COMPOSITES else cfg
        kind = sub.get("model_type")
        if kind not in _HF_DEFAULTS:
            raise ConfigError(f"unsupported text tower model_type {kind!r}; supported: {sorted(_HF_DEFAULTS)}")
        c = {**_HF_DEFAULTS[kind], **{k: v for k, v in sub.items() if v is not None}}
        nums = dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                    num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                    max_position_embeddings=c["max_position_embeddings"], layer_norm_eps=c["layer_norm_eps"],
                    hidden_act=c["hidden_act"], eos_token_id=sub.get("eos_token_id", c["eos_token_id"]),
                    hf=dict(sub))
        if kind == "clip_text_model":
            return cls.clip(**nums)
        return cls.siglip(head_size=c["projection_size"] or c["hidden_size"], **nums)

    def to_hf(self) -> dict:
        """config.json of a CLIPTextModel / SiglipTextModel: the source config with our fields over it."""
        if (self.causal, self.pooling) not in ((True, "eos"), (False, "last")) or \
                (self.causal and self.head_size is not None) or (not self.causal and self.head_size is None):
            raise ConfigError(f"this text tower (causal={self.causal}, pooling={self.pooling!r}, head_size="
                              f"{self.head_size}) is neither CLIP's nor SigLIP's, so transformers has no config for it")
        out = {k: v for k, v in self.hf.items() if k not in ("architectures", "torch_dtype")}
        out.update(architectures=["CLIPTextModel" if self.causal else "SiglipTextModel"], model_type=self.kind,
                   vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                   num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                   max_position_embeddings=self.max_position_embeddings, layer_norm_eps=self.layer_norm_eps,
                   hidden_act=self.hidden_act, eos_token_id=self.eos_token_id)
        if not self.causal:
            out["projection_size"] = self.head_size
        return out


@dataclass
class TextOutput:
    last_hidden_state: torch.Tensor       # [B, T, D], after final_layer_norm
    pooler_output: torch.Tensor           # [B, D] (CLIP) or [B, head_size] (SigLIP)


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: TextTowerConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]   # [1, T]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)     # [B, T, D]


class TextTransformer(nn.Module):
    """CLIPTextModel / SiglipTextModel."""

    def __init__(self, cfg: TextTowerConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.layers = nn.ModuleList(EncoderBlock(cfg, i, causal=cfg.causal) for i in range(cfg.num_layers))
        self.final_layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.head_size) if cfg.head_size is not None else None
        self.gradient_checkpointing = False
        # CLIP's init (std 0.02, 0.01); nn.Embedding's N(0, 1) would swamp the LayerNorms of a tiny tower
        nn.init.normal_(self.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(self.embeddings.position_embedding.weight, std=0.01)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> TextOutput:
        cfg = self.config
        self._check_ids(input_ids, attention_mask)
        B, T = input_ids.shape
        x = self.embeddings(input_ids, position_ids)                               # [B, T, D]
        mask = self._mask(attention_mask, T)
        for block in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        last = self.final_layer_norm(x)                                            # [B, T, D]
        rows = torch.arange(B, device=last.device)
        if cfg.pooling == "last":
            pooled = last[:, -1]                                                   # [B, D] (a pad position, as trained)
        else:
            pooled = last[rows, self.eos_positions(input_ids)]                     # [B, D]
        if self.head is not None:
            pooled = self.head(pooled)                                             # [B, head_size]
        return TextOutput(last_hidden_state=last, pooler_output=pooled)

    def _mask(self, attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
        if attention_mask is None or bool(attention_mask.all()):
            return None          # SDPA's own causal / full path
        if self.config.causal:
            return build_attention_mask(T, T, attention_mask=attention_mask, causal=True)
        empty = (~attention_mask.bool().any(dim=-1)).nonzero().flatten().tolist()
        if empty:
            raise InputError(f"text rows {empty[:10]} are all padding (attention_mask all 0)")
        # bidirectional: padding masks keys only, as transformers' create_bidirectional_mask; a pad
        # *query* still reads every real token, which matters because SigLIP pools the last position
        return attention_mask.bool()[:, None, None, :]                             # [B, 1, 1, T]

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Where each row's text feature is read: argmax(ids) for the legacy eos id 2, else the first EOS."""
        eos = self.config.eos_token_id
        if eos == LEGACY_EOS_ID:
            return input_ids.argmax(dim=-1)                                        # [B]
        hit = input_ids == eos                                                     # [B, T]
        missing = (~hit.any(dim=-1)).nonzero().flatten().tolist()
        if missing:
            raise InputError(f"text rows {missing[:10]} have no end-of-text token (id {eos}); CLIP pools the text "
                             "feature there: append it to every text (Processor/encode_texts does)")
        return hit.int().argmax(dim=-1)                                            # [B] first hit

    def _check_ids(self, input_ids, attention_mask) -> None:
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise InputError(f"input_ids must be an integer tensor [B, T], got "
                             f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
        T = input_ids.shape[1]
        if T > cfg.max_position_embeddings:
            raise InputError(f"text length {T} exceeds this text tower's max_position_embeddings "
                             f"{cfg.max_position_embeddings}; truncate or shorten the texts")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise InputError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                             f"{tuple(input_ids.shape)}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= cfg.vocab_size):
            raise InputError(f"input_ids hold ids outside [0, {cfg.vocab_size}) (min {int(input_ids.min())}, "
                             f"max {int(input_ids.max())}): the tokenizer does not match this text tower")


class ProjectedText(nn.Module):
    """CLIPTextModelWithProjection: the text tower and `text_projection` (no bias); `text_embeds` are
    unnormalised, as in transformers."""

    def __init__(self, text_model: TextTransformer, projection_dim: int):
        super().__init__()
        self.text_model = text_model
        self.text_projection = nn.Linear(text_model.config.hidden_size, projection_dim, bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> TextOutput:
        out = self.text_model(input_ids, attention_mask, position_ids)
        return TextOutput(last_hidden_state=out.last_hidden_state,
                          pooler_output=self.text_projection(out.pooler_output))


def encode_texts(texts: list[str], tok, max_length: int, pad_to_max: bool = False) -> dict[str, torch.Tensor]:
    """Captions -> input_ids [B, T] (+ EOS, right-padded) and attention_mask, the way CLIP's and
    SigLIP's tokenizers prepare them (SigLIP was trained on texts padded to max_length: pad_to_max).
    A text longer than max_length (EOS included) is an InputError naming it, never cut silently."""
    eos, pad = tok.eos_token_id, tok.pad_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no eos_token; CLIP/SigLIP text towers need one to end every text")
    pad = eos if pad is None else pad
    rows = []
    for i, text in enumerate(texts):
        ids = tok.encode(text, add_special_tokens=False) + [eos]
        if len(ids) > max_length:
            raise InputError(f"text {i} ({text[:60]!r}) is {len(ids)} tokens with EOS; the text tower takes at "
                             f"most {max_length}")
        rows.append(ids)
    T = max_length if pad_to_max else max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


__all__ = ["TextTowerConfig", "TextTransformer", "TextOutput", "ProjectedText", "encode_texts", "LEGACY_EOS_ID"]
