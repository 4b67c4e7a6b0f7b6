"""BERT: a bidirectional Transformer encoder (Devlin et al. 2018, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding").

    x = LN(word + position + segment embeddings)
    L x post-norm layers:  x = LN(x + SelfAttn(x))
                           [x = LN(x + CrossAttn(x, encoder states))]   optional, chosen layers
                           x = LN(x + FFN_gelu(x))
    pooled = tanh(W x[:, 0])                      (the [CLS] vector, for NSP / classification)
    MLM head: logits = E^T LN(gelu(W x)) + b      (decoder tied to the word embeddings)
    NSP head: logits = W pooled                   (is sentence B the continuation of A?)

The layer is written once for every model built on it: BERT itself, the cross-attention text
encoders of ALBEF/BLIP (cross-attention in chosen layers, on every token) and BLIP-2's Q-Former
(ocellus/models/connectors/qformer.py: learned queries prepended to the text, cross-attention and
their own feed-forward for the queries only; `query_length` splits the two streams).

Matches transformers' BertModel / BertForMaskedLM / BertForPreTraining (tests/parity/test_bert_parity.py,
which also checks the sentence embeddings of the shipped all-MiniLM-L6-v2 against sentence-transformers).
Module names inside a layer follow transformers' (query/key/value, output.dense, output.LayerNorm,
intermediate); the key table in ocellus/models/families/bert/checkpoint.py maps the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_ints, required_fields
from ocellus.nn.attention import attend
from ocellus.nn.masks import build_attention_mask
from ocellus.nn.mlp import ACTIVATIONS, activation
from ocellus.nn.norms import LayerNorm


@dataclass(frozen=True)
class BertDims:
    """The numbers of a BERT stack with transformers' BertConfig defaults, checked once: BertConfig's and
    the Q-Former's (connectors/qformer.QFormerConfig, whose layers are BertLayers) under the same names."""
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0

    def __post_init__(self):
        positive_ints(self, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                             "intermediate_size", "max_position_embeddings"), "BERT config field {!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"BERT hidden_size={self.hidden_size} is not divisible by "
                              f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"BERT hidden_act {self.hidden_act!r}; supported: {sorted(ACTIVATIONS)}")

    def dims(self) -> dict:
        """These numbers under their (transformers') names, as both configs write them to config.json."""
        return {f.name: getattr(self, f.name) for f in fields(BertDims)}


@dataclass(frozen=True)
class BertConfig(BertDims):
    type_vocab_size: int = 2                 # segment (sentence A/B) embeddings; 0: none (BLIP-2's Q-Former)
    tie_word_embeddings: bool = True         # MLM decoder = word embeddings^T
    cross_attention_layers: tuple[int, ...] = ()   # layers with cross-attention to encoder states
    encoder_hidden_size: int | None = None   # width of those states (default: hidden_size)
    hf: dict = field(default_factory=dict, compare=False, repr=False)  # the source config.json, kept for save

    def __post_init__(self):
        super().__post_init__()
        bad = [i for i in self.cross_attention_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ConfigError(f"cross_attention_layers {bad} out of range for {self.num_hidden_layers} layers")

    @classmethod
    def from_hf(cls, cfg: dict) -> "BertConfig":
        required_fields(cfg, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                              "intermediate_size"), "BERT config.json")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"BERT position_embedding_type={cfg['position_embedding_type']!r} is not implemented "
                              f"(only 'absolute')")
        if cfg.get("is_decoder"):
            raise ConfigError("BERT with is_decoder=true (causal, BertLMHeadModel) is not supported here; "
                              "this is the bidirectional encoder")
        n = cfg["num_hidden_layers"]
        return cls(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_hidden_layers=n,
                   num_attention_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
                   hidden_act=cfg.get("hidden_act", "gelu"),
                   max_position_embeddings=cfg.get("max_position_embeddings", 512),
                   type_vocab_size=cfg.get("type_vocab_size", 2), layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
                   pad_token_id=cfg.get("pad_token_id", 0),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                   cross_attention_layers=tuple(range(n)) if cfg.get("add_cross_attention") else (),
                   hf=dict(cfg))

    def to_hf(self) -> dict:
        every = self.cross_attention_layers == tuple(range(self.num_hidden_layers))
        if self.cross_attention_layers and not every:
            raise ConfigError("a BERT with cross-attention in some layers only has no transformers config; "
                              "save the model that uses it (e.g. the Q-Former's family)")
        out = {k: v for k, v in self.hf.items() if k not in ("torch_dtype",)}
        out.update(model_type="bert", **self.dims(), type_vocab_size=self.type_vocab_size,
                   tie_word_embeddings=self.tie_word_embeddings, add_cross_attention=every and bool(
                       self.cross_attention_layers), position_embedding_type="absolute")
        return out


# ---- layers (shared with the Q-Former) ---------------------------------------------------------
class AddNorm(nn.Module):
    """BERT's post-norm residual: LN(residual + dense(x)) (transformers' BertSelfOutput / BertOutput)."""

    def __init__(self, in_dim: int, dim: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_dim, dim)
        self.LayerNorm = LayerNorm(dim, eps=eps)   # transformers' (TF-era) capitalised name, kept for checkpoints

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class BertAttention(nn.Module):
    """Multi-head attention + AddNorm. Self-attention, or cross-attention when `kv` (encoder states of
    width kv_dim) is given. mask: boolean [B, 1, Tq, Tk], True = may attend; None = everything."""

    def __init__(self, dim: int, num_heads: int, eps: float, kv_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim or dim, dim)
        self.value = nn.Linear(kv_dim or dim, dim)
        self.output = AddNorm(dim, dim, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kv: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        src = x if kv is None else kv
        H, Dh = self.num_heads, D // self.num_heads
        q = self.query(x).view(B, T, H, Dh).transpose(1, 2)                           # [B, H, T, Dh]
        k = self.key(src).view(B, src.shape[1], H, Dh).transpose(1, 2)                # [B, H, S, Dh]
        v = self.value(src).view(B, src.shape[1], H, Dh).transpose(1, 2)              # [B, H, S, Dh]
        y = attend(q, k, v, mask, is_causal=False).transpose(1, 2).reshape(B, T, D)   # [B, T, D]
        return self.output(y, x)


class FeedForward(nn.Module):
    """LN(x + W2 act(W1 x)); `intermediate` / `output` as transformers names them."""

    def __init__(self, dim: int, hidden: int, act: str, eps: float):
        super().__init__()
        self.intermediate = nn.Linear(dim, hidden)
        self.output = AddNorm(hidden, dim, eps)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.act(self.intermediate(x)), x)


class BertLayer(nn.Module):
    """One post-norm encoder layer.

    cross_attention: a cross-attention sub-layer after self-attention (kv width encoder_dim).
    query_ffn: a second feed-forward for the first `query_length` tokens (BLIP-2's learned queries);
    then cross-attention applies to those tokens only, and text_ffn says whether the layer has the
    text feed-forward at all (the Q-Former of Blip2ForConditionalGeneration never sees text)."""

    def __init__(self, cfg: BertConfig, cross_attention: bool = False, query_ffn: bool = False,
                 text_ffn: bool = True):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attention = BertAttention(D, cfg.num_attention_heads, eps)
        self.crossattention = (BertAttention(D, cfg.num_attention_heads, eps, kv_dim=cfg.encoder_hidden_size or D)
                               if cross_attention else None)
        self.ffn = FeedForward(D, cfg.intermediate_size, cfg.hidden_act, eps) if text_ffn else None
        self.ffn_query = FeedForward(D, cfg.intermediate_size, cfg.hidden_act, eps) if query_ffn else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, encoder_states: torch.Tensor | None = None,
                encoder_mask: torch.Tensor | None = None, query_length: int = 0) -> torch.Tensor:
        x = self.attention(x, mask)
        if self.ffn_query is None:                                # plain BERT / ALBEF-BLIP text encoder
            if self.crossattention is not None:
                if encoder_states is None:
                    raise InputError("this BERT layer has cross-attention: pass encoder_hidden_states")
                x = self.crossattention(x, encoder_mask, kv=encoder_states)
            return self._text_ffn(x)
        # Q-Former: only the queries look at the image, and they have their own FFN; text alone
        # (query_length 0, ITC's text encoder) skips cross-attention, as in BLIP-2
        queries, text = x[:, :query_length], x[:, query_length:]  # [B, Q, D], [B, T, D]
        if query_length > 0:
            if self.crossattention is not None:
                if encoder_states is None:
                    raise InputError("this Q-Former layer has cross-attention: pass the image features")
                queries = self.crossattention(queries, encoder_mask, kv=encoder_states)
            queries = self.ffn_query(queries)
        if text.shape[1] == 0:
            return queries
        return torch.cat([queries, self._text_ffn(text)], dim=1)  # [B, Q + T, D]

    def _text_ffn(self, x: torch.Tensor) -> torch.Tensor:
        if self.ffn is None:
            raise InputError("this Q-Former has no text feed-forward (use_qformer_text_input=false): "
                             "it takes queries only, no input_ids")
        return self.ffn(x)


# ---- the encoder -------------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size else None
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None]             # [1, T]
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)  # [B, T, D]
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class MLMHead(nn.Module):
    """transformers' BertLMPredictionHead: transform (dense, act, LN), then the vocabulary projection.
    Tied (BERT's default): its weight is the word embedding matrix and its bias is `bias`. Untied,
    `decoder` has its own weight and bias and `bias` is unused, exactly as in transformers, so both
    kinds of checkpoint load strictly."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        if cfg.tie_word_embeddings:
            self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(x))))                  # [B, T, V]


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor                 # [B, T, D]
    pooler_output: torch.Tensor | None = None       # [B, D]
    logits: torch.Tensor | None = None              # MLM [B, T, V]
    nsp_logits: torch.Tensor | None = None          # [B, 2]
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None   # embeddings, then every layer's output


# transformers class -> its heads (pooler, mlm, nsp)
HF_ARCHITECTURES = {"BertModel": (True, False, False), "BertForMaskedLM": (False, True, False),
                    "BertForPreTraining": (True, True, True)}


class Bert(nn.Module):
    """The encoder plus the optional pooler, MLM and NSP heads (BertModel = pooler; BertForMaskedLM =
    mlm; BertForPreTraining = pooler + mlm + nsp)."""

    def __init__(self, cfg: BertConfig, pooler: bool = True, mlm_head: bool = False, nsp_head: bool = False):
        super().__init__()
        if nsp_head and not pooler:
            raise ConfigError("the NSP head reads the pooled [CLS] vector: it needs pooler=True")
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg, cross_attention=i in cfg.cross_attention_layers)
                                    for i in range(cfg.num_hidden_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if pooler else None
        self.mlm = MLMHead(cfg) if mlm_head else None
        self.nsp = nn.Linear(cfg.hidden_size, 2) if nsp_head else None
        self.apply(init_bert_weights)   # (zeroes the MLM bias, which the tied decoder shares)
        if self.mlm is not None and cfg.tie_word_embeddings:
            self.mlm.decoder.weight = self.embeddings.word_embeddings.weight
        # which transformers class these heads are: the checkpoint family `ocellus.save` writes with
        heads = (pooler, mlm_head, nsp_head)
        self.architecture = next((a for a, h in HF_ARCHITECTURES.items() if h == heads), None)
        if self.architecture is not None:
            self.family_name = f"bert:{self.architecture}"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, next_sentence_label: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> BertOutput:
        """attention_mask [B, T] (1 = token, 0 = padding); encoder_* for the cross-attention layers.
        labels [B, T]: MLM targets, -100 where not masked; next_sentence_label [B]: 0 = B follows A."""
        self._check_ids(input_ids)
        B, T = input_ids.shape
        x = self.embeddings(input_ids, token_type_ids, position_ids)                 # [B, T, D]
        mask = build_attention_mask(T, T, attention_mask=attention_mask, causal=False, device=x.device)
        enc_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            enc_mask = encoder_attention_mask.bool()[:, None, None, :]               # [B, 1, 1, S]
        hidden = [x]
        for layer in self.layers:
            x = layer(x, mask, encoder_hidden_states, enc_mask)
            hidden.append(x)
        out = BertOutput(last_hidden_state=x, hidden_states=tuple(hidden) if output_hidden_states else None)
        if self.pooler is not None:
            out.pooler_output = torch.tanh(self.pooler(x[:, 0]))                    # [B, D]
        if self.mlm is not None:
            out.logits = self.mlm(x)                                                 # [B, T, V]
        if self.nsp is not None:
            out.nsp_logits = self.nsp(out.pooler_output)                             # [B, 2]
        out.loss = self._loss(out, labels, next_sentence_label)
        return out

    def _loss(self, out: BertOutput, labels, next_sentence_label) -> torch.Tensor | None:
        loss = None
        if labels is not None:
            if out.logits is None:
                raise InputError("MLM labels given but this BERT has no MLM head (mlm_head=True)")
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        if next_sentence_label is not None:
            if out.nsp_logits is None:
                raise InputError("next_sentence_label given but this BERT has no NSP head (nsp_head=True)")
            nsp = F.cross_entropy(out.nsp_logits.float(), next_sentence_label)
            loss = nsp if loss is None else loss + nsp
        return loss

    def _check_ids(self, input_ids) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise InputError(f"input_ids must be an integer tensor [batch, seq], got "
                             f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
        T = input_ids.shape[1]
        if T > self.config.max_position_embeddings:
            raise InputError(f"sequence of {T} tokens exceeds BERT's {self.config.max_position_embeddings} positions")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise InputError(f"input_ids hold ids outside [0, {self.config.vocab_size})")


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's init for training from scratch: N(0, 0.02) weights, zero biases, unit LayerNorms.
    (Checkpoint loading skips it: hub/checkpoint.py builds with initialisers disabled.)"""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# ---- sentence embeddings and MLM masking -------------------------------------------------------
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors, padding excluded (sentence-transformers' mean pooling). -> [B, D]"""
    m = attention_mask[..., None].to(hidden.dtype)                                   # [B, T, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def sentence_embedding(model: Bert, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sentence-BERT (Reimers & Gurevych 2019) as all-MiniLM-L6-v2 uses it: mean-pooled last layer,
    L2-normalised. -> [B, D]"""
    h = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
    return F.normalize(mean_pool(h, attention_mask), dim=-1)


def mask_tokens(input_ids: torch.Tensor, mask_token_id: int, vocab_size: int, special: torch.Tensor | None = None,
                probability: float = 0.15, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption: choose `probability` of the (non-special) tokens; of those 80%
    become [MASK], 10% a random token, 10% stay. Returns (corrupted ids, labels): labels hold the
    original id at chosen positions and -100 elsewhere. special: bool [B, T], never chosen (CLS,
    SEP, padding)."""
    if not 0.0 < probability < 1.0:
        raise ConfigError(f"masking probability must be in (0, 1), got {probability}")
    def draw(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < p
    chosen = draw(probability)
    if special is not None:
        chosen &= ~special.bool()
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    to_mask = chosen & draw(0.8)
    to_random = chosen & ~to_mask & draw(0.5)                        # half of the remaining 20%
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    ids = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    ids = torch.where(to_random, random_ids, ids)
    return ids, labels

