"""Decoder-only language model: the Llama / Qwen2 / Mistral / Qwen3 family (Touvron et al. 2023; Qwen2, Qwen3 reports).

pre-norm blocks: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); RoPE on q/k; GQA; optional
qkv bias (Qwen2), per-head RMSNorm of q and k before RoPE (Qwen3) and tied embeddings. Matches transformers'
LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM / Qwen3ForCausalLM logits (see
tests/parity/test_decoder_parity.py). Checkpoint names are mapped
by the key table in ocellus/models/families/decoder/checkpoint.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_int, positive_ints, required_fields
from ocellus.nn.attention import Attention
from ocellus.nn.kept_rows import KeptRows
from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.masks import build_attention_mask
from ocellus.nn.mlp import ACTIVATIONS, SwiGLU
from ocellus.nn.mrope import check_mrope_section, mrope_cos_sin
from ocellus.nn.norms import RMSNorm
from ocellus.nn.rope import RopeConfig, RotaryEmbedding
from ocellus.infer.generate import generate

log = logging.getLogger(__name__)


# model types whose transformers class rotates every dim of the head (a partial_rotary_factor is ignored there)
WHOLE_HEAD_ROTARY = ("llama", "qwen2", "mistral", "qwen3")
QWEN2_TYPES = ("qwen2", "qwen2_vl_text", "qwen2_5_vl_text")    # q/k/v bias always, none on o_proj or the MLP
# what transformers' config class assumes for a field config.json leaves out, where that differs from our defaults:
# a head_dim of 128 whatever the width (Qwen3), a window on by default (Mistral), 32 (Qwen2 / Qwen3) or 8 (Mistral)
# key/value heads whatever the query heads (an explicit null means as many as the query heads). Not eos: the class's
# default eos 2 (Llama, Mistral) is no eos to transformers' generate, which stops only at one config.json names
HF_DEFAULTS = {"mistral": {"sliding_window": 4096, "max_position_embeddings": 4096 * 32, "bos_token_id": 1,
                           "num_key_value_heads": 8},
               "qwen2": {"max_position_embeddings": 32768, "num_key_value_heads": 32},
               "qwen3": {"head_dim": 128, "max_position_embeddings": 32768, "num_key_value_heads": 32}}
LAYER_TYPES = ("full_attention", "sliding_attention")
_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings")


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope: RopeConfig
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False   # bias on q/k/v (Qwen2: True)
    o_bias: bool = False           # bias on o_proj (Llama's attention_bias sets both)
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    qk_norm: bool = False          # RMSNorm over each head's dims of q and k before RoPE (Qwen3)
    # the attention window of a checkpoint that applies one (Mistral's sliding_window; Qwen2's / Qwen3's with
    # use_sliding_window, on the layers layer_types names): within it attention is full, past it is not
    # implemented, so it caps the context (exact whichever layers slide)
    sliding_window: int | None = None
    hf: dict = field(default_factory=dict, compare=False, repr=False)  # the source config.json, kept for save

    def __post_init__(self):
        positive_ints(self, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "num_key_value_heads", "head_dim"), "config field {!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                              f"num_key_value_heads={self.num_key_value_heads}")

    @classmethod
    def from_hf(cls, cfg: dict) -> "DecoderConfig":
        """Llama / Qwen2 / Mistral / Qwen3-style config.json -> DecoderConfig."""
        required_fields(cfg, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                              "num_attention_heads"))
        kind = cfg.get("model_type")
        left_out = set(HF_DEFAULTS.get(kind, {})) - set(cfg)
        cfg = {**HF_DEFAULTS.get(kind, {}), **cfg}
        # a recipe's model.config is this dict too: a typo must name its key
        positive_ints(cfg, _POSITIVE_INTS, "config {}", optional=True)
        positive_ints(cfg, ("rms_norm_eps", "rope_theta"), "config {}", optional=True, number=True)
        heads = cfg["num_attention_heads"]
        kv_heads = cfg.get("num_key_value_heads") or heads
        if heads % kv_heads and "num_key_value_heads" in left_out:
            # transformers' default there builds a model its own forward cannot run: nothing to match, so the
            # reading Ocellus' own configs (tests, recipes) mean, said out loud
            log.warning(f"config.json leaves num_key_value_heads out: transformers' {kind!r} default {kv_heads} does "
                        f"not divide num_attention_heads={heads} (a model it cannot run); using {heads}, one per head")
            kv_heads = heads
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        qkv_bias, o_bias, mlp_bias, qk_norm = layout(kind, cfg.get("attention_bias", False), cfg.get("mlp_bias", False))
        eos = cfg.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        act = cfg.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise ConfigError(f"config hidden_act {act!r} is not one Ocellus computes: {sorted(ACTIVATIONS)}")
        rope = RopeConfig.from_hf(cfg, head_dim)
        if kind in WHOLE_HEAD_ROTARY and rope.rotary_dim != head_dim and rope.rope_type != "default":
            # transformers' scaled frequencies cover only that part of the head, which its class rotates whole: it
            # fails on such a config, so there is no model to match
            raise ConfigError(f"config.json: partial_rotary_factor {rope.partial_rotary_factor} with rope_type "
                              f"{rope.rope_type!r} is not a model transformers' {kind!r} computes (it rotates the "
                              f"whole head); drop partial_rotary_factor or the rope scaling")
        if kind in WHOLE_HEAD_ROTARY and rope.partial_rotary_factor != 1.0:
            log.warning(f"config.json: model_type {cfg['model_type']!r} rotates the whole head in transformers, "
                        f"which ignores its partial_rotary_factor {rope.partial_rotary_factor}; so does this load")
            rope = replace(rope, partial_rotary_factor=1.0)
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=kv_heads,
            head_dim=head_dim, rope=rope,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), hidden_act=act,
            attention_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias, qk_norm=qk_norm,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=eos, pad_token_id=cfg.get("pad_token_id"),
            sliding_window=attention_window(cfg), hf=dict(cfg),
        )

    def to_hf(self) -> dict:
        """config.json for transformers: the source config with our fields written over it. ConfigError where the
        model_type written (the source's, else the one our biases and q/k norm name) would compute another model."""
        if self.rope.partial_rotary_factor != 1.0:   # a Llama / Qwen2 config would be read rotating every dim
            raise ConfigError(f"a decoder rotating {self.rope.partial_rotary_factor} of each head has no transformers "
                              f"Llama / Qwen2 config (they rotate the whole head): it cannot be saved as one")
        kind = self.hf.get("model_type") or ("qwen3" if self.qk_norm else
                                             "qwen2" if self.attention_bias and not self.o_bias else "llama")
        ours = (self.attention_bias, self.o_bias, self.mlp_bias, self.qk_norm)
        if layout(kind, self.attention_bias, self.mlp_bias) != ours:
            raise ConfigError(f"a decoder with (q/k/v bias, o_proj bias, mlp bias, q/k norm) = {ours} is not what "
                              f"transformers' model_type {kind!r} computes: it cannot be saved as one")
        rope = {"rope_type": self.rope.rope_type, "rope_theta": self.rope.theta, **self.rope.params}
        out = {k: v for k, v in self.hf.items() if k not in ("rope_scaling", "rope_theta")}
        out.update(
            architectures=out.get("architectures") or [HF_ARCHITECTURES.get(kind, "LlamaForCausalLM")],
            model_type=kind,
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings, rms_norm_eps=self.rms_norm_eps,
            hidden_act=self.hidden_act, tie_word_embeddings=self.tie_word_embeddings,
            rope_parameters=rope, bos_token_id=self.bos_token_id, pad_token_id=self.pad_token_id,
            eos_token_id=(list(self.eos_token_id) if len(self.eos_token_id) > 1
                          else self.eos_token_id[0] if self.eos_token_id else None),
        )
        if kind not in QWEN2_TYPES:
            out.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        return out


HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                    "qwen3": "Qwen3ForCausalLM"}


def layout(model_type: str | None, attention_bias, mlp_bias) -> tuple[bool, bool, bool, bool]:
    """(q/k/v bias, o_proj bias, mlp bias, q/k norm) of transformers' class for model_type, given the config's
    attention_bias and mlp_bias (each class reads only those flags it honours; Llama's layout for any other)."""
    attention_bias, mlp_bias = bool(attention_bias), bool(mlp_bias)
    if model_type in QWEN2_TYPES:
        return True, False, False, False
    if model_type == "mistral":
        return False, False, False, False
    if model_type == "qwen3":
        return attention_bias, attention_bias, False, True
    return attention_bias, attention_bias, mlp_bias, False


def attention_window(cfg: dict) -> int | None:
    """The sliding window transformers applies to some layer of this config, or None. Mistral: sliding_window on
    every layer. Otherwise (Qwen2 / Qwen3) only with use_sliding_window, on the layers whose layer_types entry is
    'sliding_attention' (by default those from max_window_layers on)."""
    if cfg.get("model_type") == "mistral":
        return positive_int(cfg.get("sliding_window"), "config sliding_window", optional=True)
    window = positive_int(cfg.get("sliding_window", 4096), "config sliding_window", optional=True)
    if not cfg.get("use_sliding_window"):
        window = None       # transformers' config drops the window then, whatever layer_types says
    n = cfg["num_hidden_layers"]
    first = cfg.get("max_window_layers", 28)
    if not isinstance(first, int) or isinstance(first, bool) or first < 0:
        raise ConfigError(f"config max_window_layers must be an int >= 0, got {first!r}")
    types = cfg.get("layer_types") or ["sliding_attention" if window and i >= first else "full_attention"
                                       for i in range(n)]
    if len(types) != n or not set(types) <= set(LAYER_TYPES):
        raise ConfigError(f"config layer_types must name one of {LAYER_TYPES} for each of the {n} layers, "
                          f"got {types!r}")
    if "sliding_attention" in types and window is None:   # transformers' forward fails on it: no model to match
        raise ConfigError(f"config layer_types names sliding_attention layers but there is no window (use_sliding_"
                          f"window {cfg.get('use_sliding_window')!r}, sliding_window {cfg.get('sliding_window')!r})")
    return window if "sliding_attention" in types else None


class CausalLMOutput:
    """logits [B, T, V] (or [B, k, V] with logits_to_keep=k), loss, hidden_states: the final-norm
    output [B, T, D]. Either may be given as a function, run on first access (in the same graph):
    with labels the loss needs the last layer and lm_head only where a label is trained, so a
    training step that reads only .loss never pays for them at image and prompt positions."""

    def __init__(self, loss: torch.Tensor | None = None, hidden_states=None, logits=None):
        self.loss = loss
        self._hidden, self._logits = hidden_states, logits

    @property
    def hidden_states(self) -> torch.Tensor:
        if callable(self._hidden):
            self._hidden = self._hidden()
        return self._hidden

    @property
    def logits(self) -> torch.Tensor:
        if callable(self._logits):
            self._logits = self._logits(self.hidden_states)
        return self._logits

    @logits.setter
    def logits(self, value: torch.Tensor) -> None:
        self._logits = value


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                                   cfg.head_dim, qkv_bias=cfg.attention_bias, out_bias=cfg.o_bias,
                                   layer_idx=layer_idx, qk_norm_eps=cfg.rms_norm_eps if cfg.qk_norm else None)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias, act=cfg.hidden_act)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, mask, cache, rows=None):
        """rows (KeptRows): compute only at those positions and return them, [N, D]."""
        a = self.self_attn(self.input_layernorm(x), rope, mask, cache, rows=rows)
        x = (x if rows is None else rows.select(x)) + a
        return x + self.mlp(self.post_attention_layernorm(x))


class CausalLMBase(nn.Module):
    """What the decoder-only LMs share (DecoderLM here, DeepseekLM in deepseek.py): token embeddings, the layer
    stack, a final RMSNorm, RoPE, the lm_head (tied to the embeddings when the config says so), their init, the
    checked input embedding, the positions a forward starts from and the generation entry point."""

    def __init__(self, cfg, layer: type[nn.Module]):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(layer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.rope)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @staticmethod
    def _init_weights(module: nn.Module, std: float = 0.02) -> None:
        """GPT-2/Llama init for models trained from scratch: N(0, 0.02) weights, zero biases.
        (Loading a checkpoint skips this: hub/checkpoint.py builds with initialisers disabled.)"""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def max_context(self) -> int:
        return self.config.max_position_embeddings

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)

    def _start(self, input_ids, inputs_embeds, position_ids, cache, unused: dict):
        """A forward's start: x [B, T, D] (checked ids embedded, or inputs_embeds), the cached length `past`
        (InputError past the context) and position_ids, defaulting to past + arange(T) as [B, T]."""
        if unused:
            raise InputError(f"unexpected forward arguments {sorted(unused)}")
        x = self._embed(input_ids, inputs_embeds)                                   # [B, T, D]
        B, T, _ = x.shape
        past = cache.length if cache is not None else 0
        if past + T > self.max_context:
            window = getattr(self.config, "sliding_window", None)
            why = f" (its attention window: sliding-window attention past {window} tokens is not implemented)" \
                if window is not None and window == self.max_context else ""
            raise InputError(f"sequence of {past + T} tokens exceeds the model's context of {self.max_context}{why}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device).expand(B, T)  # [B, T]
        return x, past, position_ids

    def _embed(self, input_ids, inputs_embeds):
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise InputError(f"inputs_embeds must be [B, T, {self.config.hidden_size}], got {tuple(inputs_embeds.shape)}")
            return inputs_embeds
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise InputError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.numel():
            lo, hi = (int(t) for t in torch.aminmax(input_ids))  # one reduction: this runs every decode step
            if lo < 0 or hi >= self.config.vocab_size:
                raise InputError(f"input_ids hold ids outside [0, {self.config.vocab_size}): min {lo}, max {hi}")
        return self.embed_tokens(input_ids)


class DecoderLM(CausalLMBase):
    # While infer/fused_decode.py attaches it (batch-1 decoding on CPU): (x [1, 1, D], position_ids [1, 1], cache,
    # attention_mask) -> (hidden [1, 1, D], logits [1, 1, V]) for every layer, the final norm and the lm_head in one
    # compiled call, or None (the layers run as written). It runs layers of type `fused_layer` only.
    fused_decode = None
    fused_layer = DecoderLayer

    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg, DecoderLayer)
        section = cfg.rope.params.get("mrope_section")  # Qwen2-VL: position_ids may be [3, B, T] (nn/mrope.py)
        self.mrope_section = check_mrope_section(section, cfg.rope.rotary_dim) if section is not None else None
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    # -- generation-engine interface -------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> StaticKVCache:
        p = self.embed_tokens.weight
        return StaticKVCache(self.config.num_hidden_layers, batch_size, self.config.num_key_value_heads,
                             max_len, self.config.head_dim, dtype=p.dtype, device=p.device)

    @property
    def max_context(self) -> int:
        rope = self.config.rope
        context = self.config.max_position_embeddings
        if rope.rope_type == "dynamic":  # dynamic NTK is made to run past the trained context
            context = int(rope.params["factor"] * context)
        return min(context, self.config.sliding_window or context)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache: StaticKVCache | None = None,
                document_ids: torch.Tensor | None = None, logits_to_keep: int = 0, before_layer=None,
                **unused) -> CausalLMOutput:
        """attention_mask [B, T_k]: 1 for real tokens over cache + new tokens (or just new ones
        without a cache). position_ids [B, T] default to cache.length + arange(T) (transformers' forward
        does not derive them from the mask either); a model with mrope_section also takes M-RoPE ids
        [3, B, T]. logits_to_keep=k computes only the last k. before_layer(i, x) -> x, when given, runs
        before layer i: deep fusion (Flamingo's gated cross-attention, models/fusion_xattn.py) inserts
        its blocks there, between frozen layers."""
        x, past, position_ids = self._start(input_ids, inputs_embeds, position_ids, cache, unused)  # [B, T, D]
        B, T, _ = x.shape
        if (self.fused_decode is not None and B == T == 1 and cache is not None and labels is None
                and before_layer is None and document_ids is None and position_ids.dim() == 2):
            out = self.fused_decode(x, position_ids, cache, attention_mask)         # one token, every layer
            if out is not None:
                cache.advance(1)
                return CausalLMOutput(hidden_states=out[0], logits=out[1])
        if position_ids.dim() == 3:  # M-RoPE: (temporal, height, width) ids, one frequency band each
            if self.mrope_section is None or position_ids.shape[0] != 3:
                raise InputError(f"position_ids of shape {tuple(position_ids.shape)}: [3, B, T] M-RoPE ids need a "
                                 f"model whose rope config has mrope_section (Qwen2-VL)")
            rope = mrope_cos_sin(*self.rotary_emb(position_ids, dtype=x.dtype), self.mrope_section)
        else:
            rope = self.rotary_emb(position_ids, dtype=x.dtype)
        mask = build_attention_mask(T, past + T, attention_mask=attention_mask, document_ids=document_ids,
                                    device=x.device)
        # With labels (and no cache) the last layer runs only at trained positions: its output
        # elsewhere feeds nothing but logits the loss ignores (keys/values are still made for all).
        if labels is not None:
            rows, targets = trained_rows(labels, (B, T))                            # [N], [N]
        prune = labels is not None and cache is None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if before_layer is not None:
                x = before_layer(i, x)
            if not (prune and i == last):
                x = self._run_layer(layer, x, rope, mask, cache)
        if cache is not None:
            cache.advance(T)

        def head(h):                                                                # -> [B, T|k, V]
            return self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        if labels is None:
            h = self.norm(x)
            return CausalLMOutput(hidden_states=h, logits=head(h))
        if not prune:
            h = self.norm(x)
            loss = F.cross_entropy(self.lm_head(rows.select(h)).float(), targets)
            return CausalLMOutput(loss=loss, hidden_states=h, logits=head)

        def full_hidden():                                                          # [B, T, D], on request
            return self.norm(self._run_layer(self.layers[last], x, rope, mask, None))
        h_rows = self.norm(self._run_layer(self.layers[last], x, rope, mask, None, rows))  # [N, D]
        loss = F.cross_entropy(self.lm_head(h_rows).float(), targets)
        return CausalLMOutput(loss=loss, hidden_states=full_hidden, logits=head)

    def _run_layer(self, layer, x, rope, mask, cache, rows=None):
        if self.gradient_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(layer, x, rope, mask, cache, rows, use_reentrant=False)
        return layer(x, rope, mask, cache, rows)


def trained_rows(labels: torch.Tensor, shape: tuple[int, int], ignore_index: int = -100):
    """The positions whose next label is trained (the only rows the loss reads) and those labels."""
    if labels.shape != shape:
        raise InputError(f"labels shape {tuple(labels.shape)} does not match the sequence {tuple(shape)}")
    next_labels = F.pad(labels[:, 1:], (0, 1), value=ignore_index)              # [B, T]: label of t+1
    rows = KeptRows.from_mask(next_labels != ignore_index)
    return rows, rows.select(next_labels)                                         # [N] targets


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy: logits at t predict labels at t+1; -100 labels are not trained.
    Mean over trained tokens (transformers' convention)."""
    if labels.shape != logits.shape[:2]:
        raise InputError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape[:2])}")
    shift_logits = logits[:, :-1].float()                                    # [B, T-1, V]
    shift_labels = labels[:, 1:]                                             # [B, T-1]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=ignore_index)
