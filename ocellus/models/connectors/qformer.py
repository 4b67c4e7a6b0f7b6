"""The Q-Former (Li et al. 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image
Encoders and Large Language Models", sec. 3.1): a BERT whose input starts with `num_query_tokens`
learned query vectors. Queries and text share the self-attention layers; every
`cross_attention_frequency`-th layer the queries (only) cross-attend to the frozen image features;
queries and text have separate feed-forward layers. Whatever the text does, the queries' outputs
[B, Q, D] are a fixed-size summary of the image: the connector of BLIP-2, MiniGPT-4 and InstructBLIP.

    x = LN([queries ; word + position embeddings of the text])          (the text part is optional)
    L x BertLayer(query_length=Q): self-attention over all (masked per objective, see
        ocellus/models/families/blip2/stage1.py, losses in ocellus/models/contrastive/losses.py), cross-attention and
        ffn_query on the queries, ffn on the text

Matches transformers' Blip2QFormerModel (+ the model's `query_tokens`, which live here) and its
Blip2TextEmbeddings (tests/parity/test_blip2_parity.py). `from_bert` initialises the shared layers
from a BERT checkpoint as BLIP-2 does from bert-base: self-attention and both feed-forwards copied
(the query FFN starts as the text FFN), cross-attention and queries fresh.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.models.text.bert import Bert, BertConfig, BertDims, BertLayer, init_bert_weights
from ocellus.nn.norms import LayerNorm

# transformers' Blip2QFormerConfig defaults, for fields a config.json leaves out
_HF_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, layer_norm_eps=1e-12,
                    pad_token_id=0, cross_attention_frequency=2, encoder_hidden_size=1408,
                    use_qformer_text_input=False)


@dataclass(frozen=True)
class QFormerConfig(BertDims):
    """BERT's numbers (BertDims: the same names and defaults) + the queries and the cross-attention layout."""
    num_query_tokens: int = 32
    encoder_hidden_size: int = 1408          # the image features' width
    cross_attention_frequency: int = 2       # layer i cross-attends when i % frequency == 0
    text_input: bool = False                 # text embeddings + text FFN (stage 1, InstructBLIP); BLIP-2's LM path has none
    hf: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        positive_ints(self, ("num_query_tokens", "cross_attention_frequency", "encoder_hidden_size"),
                      "Q-Former config field {!r}")
        super().__post_init__()   # the shared numbers

    def bert(self) -> BertConfig:
        """The BertConfig of its layers (no segment embeddings; cross-attention every `frequency` layers)."""
        return BertConfig(**self.dims(), type_vocab_size=0,
                          cross_attention_layers=tuple(range(0, self.num_hidden_layers, self.cross_attention_frequency)),
                          encoder_hidden_size=self.encoder_hidden_size)

    @classmethod
    def from_hf(cls, qformer_cfg: dict, num_query_tokens: int, encoder_hidden_size: int | None = None) -> "QFormerConfig":
        c = {**_HF_DEFAULTS, **qformer_cfg}
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"qformer_config.position_embedding_type={c['position_embedding_type']!r} is not "
                              f"implemented (only 'absolute')")
        return cls(num_query_tokens=int(num_query_tokens), hidden_size=c["hidden_size"],
                   num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                   intermediate_size=c["intermediate_size"], hidden_act=c["hidden_act"],
                   layer_norm_eps=c["layer_norm_eps"],
                   encoder_hidden_size=int(encoder_hidden_size or c["encoder_hidden_size"]),
                   cross_attention_frequency=c["cross_attention_frequency"],
                   text_input=bool(c["use_qformer_text_input"]), vocab_size=c["vocab_size"],
                   max_position_embeddings=c["max_position_embeddings"], pad_token_id=c["pad_token_id"],
                   hf=dict(qformer_cfg))

    def to_hf(self) -> dict:
        out = {k: v for k, v in self.hf.items() if k not in ("torch_dtype", "dtype")}
        out.update(model_type="blip_2_qformer", **self.dims(), encoder_hidden_size=self.encoder_hidden_size,
                   cross_attention_frequency=self.cross_attention_frequency, use_qformer_text_input=self.text_input,
                   position_embedding_type="absolute")
        return out


class TextEmbeddings(nn.Module):
    """transformers' Blip2TextEmbeddings: word + absolute position embeddings (no segments, no norm:
    the Q-Former's `layernorm` normalises queries and text together)."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.position_embeddings.num_embeddings:
            raise InputError(f"text of {T} tokens exceeds the Q-Former's {self.position_embeddings.num_embeddings} positions")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.word_embeddings.num_embeddings):
            raise InputError(f"Q-Former input_ids hold ids outside [0, {self.word_embeddings.num_embeddings})")
        pos = torch.arange(T, device=input_ids.device)[None]                           # [1, T]
        return self.word_embeddings(input_ids) + self.position_embeddings(pos)         # [B, T, D]


class QFormer(nn.Module):
    def __init__(self, cfg: QFormerConfig, text_embeddings: bool | None = None):
        """text_embeddings: whether the Q-Former embeds text itself (default: cfg.text_input);
        Blip2ForConditionalGeneration has no text embeddings even with use_qformer_text_input."""
        super().__init__()
        self.config = cfg
        bert = cfg.bert()
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.hidden_size))
        embed = cfg.text_input if text_embeddings is None else text_embeddings
        self.embeddings = TextEmbeddings(cfg) if embed else None
        self.layernorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(
            BertLayer(bert, cross_attention=i in bert.cross_attention_layers, query_ffn=True, text_ffn=cfg.text_input)
            for i in range(cfg.num_hidden_layers))
        self.apply(init_bert_weights)
        nn.init.normal_(self.query_tokens, std=0.02)   # BLIP-2 (LAVIS) draws the queries like BERT's weights

    def forward(self, image_embeds: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                use_queries: bool = True) -> torch.Tensor:
        """image_embeds [B, S, Dv]: the frozen image encoder's output (needed with the queries).
        input_ids [B, T]: optional text after the queries. mask: boolean [B|1, 1, Q+T, Q+T] self-attention
        mask (True = may attend; None = all see all), which the stage-1 objectives choose.
        image_mask [B, S]: 1 for real image tokens. use_queries=False: text alone (ITC's text encoder).
        -> hidden states [B, Q+T, D] (queries first)."""
        parts = []
        if use_queries:
            if image_embeds is None:
                raise InputError("the Q-Former's queries need image_embeds [B, S, Dv]")
            if image_embeds.dim() != 3 or image_embeds.shape[-1] != self.config.encoder_hidden_size:
                raise InputError(f"image_embeds must be [B, S, {self.config.encoder_hidden_size}], "
                                 f"got {tuple(image_embeds.shape)}")
            parts.append(self.query_tokens.expand(image_embeds.shape[0], -1, -1))     # [B, Q, D]
        if input_ids is not None:
            if self.embeddings is None:
                raise InputError("this Q-Former has no text input (use_qformer_text_input=false); pass no input_ids")
            parts.append(self.embeddings(input_ids).to(self.query_tokens.dtype))       # [B, T, D]
        if not parts:
            raise InputError("the Q-Former needs queries (image_embeds) or text (input_ids)")
        x = self.layernorm(torch.cat(parts, dim=1))                                    # [B, Q+T, D]
        Q = self.config.num_query_tokens if use_queries else 0
        enc_mask = image_mask.bool()[:, None, None, :] if image_mask is not None else None   # [B, 1, 1, S]
        states = image_embeds.to(x.dtype) if use_queries else None
        for layer in self.layers:
            x = layer(x, mask, states, enc_mask, query_length=Q)
        return x

    def from_bert(self, bert: Bert) -> "QFormer":
        """Copy a BERT's layers in (BLIP-2 initialises the Q-Former from bert-base): self-attention,
        the text FFN and, as the query FFN's start, the same FFN; word/position embeddings and the
        embedding LayerNorm when the sizes fit. Cross-attention and the queries keep their fresh init.
        Raises ConfigError naming what does not fit."""
        cfg, b = self.config, bert.config
        if (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) != \
                (b.hidden_size, b.intermediate_size, b.num_attention_heads):
            raise ConfigError(f"BERT (hidden {b.hidden_size}, intermediate {b.intermediate_size}, heads "
                              f"{b.num_attention_heads}) does not fit the Q-Former (hidden {cfg.hidden_size}, "
                              f"intermediate {cfg.intermediate_size}, heads {cfg.num_attention_heads})")
        if b.num_hidden_layers < cfg.num_hidden_layers:
            raise ConfigError(f"BERT has {b.num_hidden_layers} layers, the Q-Former {cfg.num_hidden_layers}")
        with torch.no_grad():
            for ours, theirs in zip(self.layers, bert.layers):
                ours.attention.load_state_dict(theirs.attention.state_dict())
                ours.ffn_query.load_state_dict(theirs.ffn.state_dict())
                if ours.ffn is not None:
                    ours.ffn.load_state_dict(theirs.ffn.state_dict())
            self.layernorm.load_state_dict(bert.embeddings.LayerNorm.state_dict())
            if self.embeddings is not None:
                if self.embeddings.word_embeddings.weight.shape != bert.embeddings.word_embeddings.weight.shape:
                    raise ConfigError(f"Q-Former vocab {cfg.vocab_size} differs from BERT's {b.vocab_size}: "
                                      f"use BERT's tokenizer (vocab_size) for the Q-Former text")
                n = min(cfg.max_position_embeddings, b.max_position_embeddings)
                self.embeddings.word_embeddings.weight.copy_(bert.embeddings.word_embeddings.weight)
                self.embeddings.position_embeddings.weight[:n].copy_(bert.embeddings.position_embeddings.weight[:n])
        return self
