"""DeepSeek-V2 / V3 decoder (DeepSeek-AI 2024, arXiv 2405.04434 and 2412.19437): multi-head latent
attention + DeepSeekMoE, as transformers' DeepseekV2ForCausalLM / DeepseekV3ForCausalLM compute them.

pre-norm blocks: x + MLA(RMSNorm x) (nn/mla.py), then x + FFN(RMSNorm x), where the FFN is a dense
SwiGLU in the first `first_k_dense_replace` layers and a MoE (nn/moe.py: shared + top-k routed experts)
after. V2 and V3 differ only in the router and one RoPE layout flag:
  V2  softmax scores, greedy or group_limited_greedy top-k, no renormalisation; RoPE on interleaved
      pairs (transformers multiplies complex pairs); dense / shared MLPs may carry mlp_bias
  V3  sigmoid scores + e_score_correction_bias for the choice (noaux_tc), groups by top-2 sums,
      norm_topk_prob; rope_interleave from the config
Generation keeps a latent-only cache (nn/mla.LatentKVCache: per token and layer the compressed latent
c_kv and the rotated shared key k_pe), attended with W_UK / W_UV absorbed (nn/mla.py `_absorbed`): no
per-head key or value is ever stored. Checkpoint names equal transformers' (per-expert
`mlp.experts.{j}.gate_proj.weight`, as save_pretrained writes them); the outer prefixes are
Llama's (the Family: models/families/deepseek/checkpoint.py). V3's released checkpoints add num_nextn_predict_layers multi-token-prediction
layers after the decoder, `model.layers.{num_hidden_layers + k}.*` (a block plus enorm / hnorm / eh_proj /
shared_head): a training / speculative-decoding head, not part of the causal LM, so the load skips exactly
those layer indices (`mtp_keys`; transformers ignores `model.layers.61.*`). Their fp8 block-scaled weights are
dequantised by hub/fp8.py. Tests: tests/parity/test_deepseek_parity.py, tests/parity/test_deepseek_fp8.py,
tests/unit/test_deepseek_moe.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.models.text.decoder import CausalLMBase, CausalLMOutput, causal_lm_loss
from ocellus.nn.masks import build_attention_mask
from ocellus.nn.mla import LatentKVCache, MultiHeadLatentAttention
from ocellus.nn.mlp import SwiGLU
from ocellus.nn.moe import MoE, TopKRouter
from ocellus.nn.norms import RMSNorm
from ocellus.nn.rope import RopeConfig

MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
ARCHITECTURE = {"deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}
ROPE_TYPES = ("default", "yarn")   # what DeepSeek checkpoints use; the parity tests cover both
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
          "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
          "n_routed_experts", "num_experts_per_tok")
# transformers' defaults for the fields a config.json may leave out (DeepseekV2Config / DeepseekV3Config)
_DEFAULTS = {
    "deepseek_v2": dict(first_k_dense_replace=0, n_shared_experts=2, routed_scaling_factor=1.0,
                        topk_method="greedy", norm_topk_prob=False, n_group=None, topk_group=None,
                        max_position_embeddings=2048, bos_token_id=1),
    "deepseek_v3": dict(first_k_dense_replace=3, n_shared_experts=1, routed_scaling_factor=2.5,
                        topk_method="noaux_tc", norm_topk_prob=True, n_group=8, topk_group=4,
                        max_position_embeddings=4096, bos_token_id=0),
}
NEXTN_DEFAULT = {"deepseek_v2": 0, "deepseek_v3": 1}   # num_nextn_predict_layers: DeepseekV3Config's default is 1


@dataclass(frozen=True)
class DeepseekConfig:
    model_type: str                 # deepseek_v2 | deepseek_v3
    vocab_size: int
    hidden_size: int
    intermediate_size: int          # dense layers' SwiGLU width
    moe_intermediate_size: int      # each routed expert's width (shared experts: times n_shared_experts)
    num_hidden_layers: int
    num_attention_heads: int
    q_lora_rank: int | None         # None: full-rank q_proj (DeepSeek-V2-Lite)
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope: RopeConfig                # over qk_rope_head_dim dims
    rope_interleave: bool
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    first_k_dense_replace: int
    scoring: str                    # softmax (V2) | sigmoid (V3)
    topk_method: str                # greedy | group_limited_greedy (V2) | noaux_tc (V3)
    n_group: int | None
    topk_group: int | None
    norm_topk_prob: bool
    routed_scaling_factor: float
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False          # V2's dense and shared MLPs only (routed experts never have one)
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    hf: dict = field(default_factory=dict, compare=False, repr=False)  # the source config.json, kept for save

    @classmethod
    def from_hf(cls, cfg: dict) -> "DeepseekConfig":
        """DeepseekV2Config / DeepseekV3Config's config.json (transformers 5 or the hub's 4.x form)."""
        kind = _kind(cfg)
        if kind not in MODEL_TYPES:
            raise ConfigError(f"DeepSeek config: model_type {kind!r} is not one of {MODEL_TYPES}")
        missing = [k for k in (*_SIZES, "q_lora_rank") if k not in cfg]
        if missing:
            raise ConfigError(f"{kind} config.json lacks required fields {missing} (q_lora_rank may be null)")
        positive_ints(cfg, _SIZES, f"{kind} config {{}}")
        positive_ints(cfg, ("q_lora_rank",), f"{kind} config {{}}", optional=True)
        positive_ints(cfg, ("rms_norm_eps",), f"{kind} config {{}}", optional=True, number=True)
        d = {**_DEFAULTS[kind], **{k: cfg[k] for k in _DEFAULTS[kind] if k in cfg}}
        d["topk_method"] = d["topk_method"] or _DEFAULTS[kind]["topk_method"]
        positive_ints(d, ("routed_scaling_factor",), f"{kind} config {{}}", number=True)
        positive_ints(d, ("max_position_embeddings",), f"{kind} config {{}}")
        v3 = kind == "deepseek_v3"
        scoring = cfg.get("scoring_func") or ("sigmoid" if v3 else "softmax")
        if scoring != ("sigmoid" if v3 else "softmax"):
            raise ConfigError(f"{kind}: scoring_func {scoring!r} is not the one transformers' "
                              f"{ARCHITECTURE[kind]} computes ({'sigmoid' if v3 else 'softmax'})")
        allowed = ("noaux_tc",) if v3 else ("greedy", "group_limited_greedy")
        if d["topk_method"] not in allowed:
            raise ConfigError(f"{kind}: topk_method {d['topk_method']!r} unsupported; transformers' "
                              f"{ARCHITECTURE[kind]} implements {allowed}")
        if not v3 and d["norm_topk_prob"]:
            # DeepSeek's own V2 code renormalises, transformers' DeepseekV2TopkRouter does not: refuse, not guess
            raise ConfigError("deepseek_v2 with norm_topk_prob=true: transformers' DeepseekV2 ignores it while "
                              "DeepSeek's code renormalises; no released V2 checkpoint sets it")
        if cfg.get("moe_layer_freq", 1) != 1:
            raise ConfigError(f"{kind}: moe_layer_freq={cfg['moe_layer_freq']} (MoE every k-th layer) is not "
                              f"supported; every layer from first_k_dense_replace on is MoE")
        positive_ints(d, ("n_shared_experts",), f"{kind} config {{}}")
        first_k = d["first_k_dense_replace"]
        if isinstance(first_k, bool) or not isinstance(first_k, int) or first_k < 0:
            raise ConfigError(f"{kind} config first_k_dense_replace must be an int >= 0, got {first_k!r}")
        rope = RopeConfig.from_hf({**cfg, "max_position_embeddings": d["max_position_embeddings"]},
                                  head_dim=cfg["qk_rope_head_dim"])
        if rope.rope_type not in ROPE_TYPES or rope.partial_rotary_factor != 1.0:
            raise ConfigError(f"{kind}: rope {rope.rope_type!r} (partial_rotary_factor "
                              f"{rope.partial_rotary_factor}) unsupported; DeepSeek MLA rotates all of "
                              f"qk_rope_head_dim with {' or '.join(ROPE_TYPES)} RoPE")
        # not the class's default eos: transformers' generate stops only at one config.json names
        eos = cfg.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        return cls(
            model_type=kind, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"], moe_intermediate_size=cfg["moe_intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
            q_lora_rank=cfg["q_lora_rank"], kv_lora_rank=cfg["kv_lora_rank"],
            qk_nope_head_dim=cfg["qk_nope_head_dim"], qk_rope_head_dim=cfg["qk_rope_head_dim"],
            v_head_dim=cfg["v_head_dim"], rope=rope,
            rope_interleave=bool(cfg.get("rope_interleave", True)) if v3 else True,
            n_routed_experts=cfg["n_routed_experts"], n_shared_experts=d["n_shared_experts"],
            num_experts_per_tok=cfg["num_experts_per_tok"], first_k_dense_replace=first_k,
            scoring=scoring, topk_method=d["topk_method"], n_group=d["n_group"], topk_group=d["topk_group"],
            norm_topk_prob=bool(d["norm_topk_prob"]), routed_scaling_factor=float(d["routed_scaling_factor"]),
            max_position_embeddings=d["max_position_embeddings"], rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            hidden_act=cfg.get("hidden_act", "silu"), attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)) and not v3,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id", d["bos_token_id"]), eos_token_id=eos,
            pad_token_id=cfg.get("pad_token_id"), hf=dict(cfg))

    def to_hf(self) -> dict:
        """config.json for transformers: the source config with our fields written over it."""
        rope = {"rope_type": self.rope.rope_type, "rope_theta": self.rope.theta, **self.rope.params}
        out = {k: v for k, v in self.hf.items() if k not in ("rope_scaling", "rope_theta")}
        out.update(
            architectures=[ARCHITECTURE[self.model_type]], model_type=self.model_type,
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            moe_intermediate_size=self.moe_intermediate_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, q_lora_rank=self.q_lora_rank,
            kv_lora_rank=self.kv_lora_rank, qk_nope_head_dim=self.qk_nope_head_dim,
            qk_rope_head_dim=self.qk_rope_head_dim, v_head_dim=self.v_head_dim, rope_parameters=rope,
            n_routed_experts=self.n_routed_experts, n_shared_experts=self.n_shared_experts,
            num_experts_per_tok=self.num_experts_per_tok, first_k_dense_replace=self.first_k_dense_replace,
            n_group=self.n_group, topk_group=self.topk_group, norm_topk_prob=self.norm_topk_prob,
            routed_scaling_factor=self.routed_scaling_factor, max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps, hidden_act=self.hidden_act, attention_bias=self.attention_bias,
            tie_word_embeddings=self.tie_word_embeddings, bos_token_id=self.bos_token_id,
            pad_token_id=self.pad_token_id,
            eos_token_id=(list(self.eos_token_id) if len(self.eos_token_id) > 1
                          else self.eos_token_id[0] if self.eos_token_id else None),
        )
        if self.model_type == "deepseek_v2":
            out.update(topk_method=self.topk_method, mlp_bias=self.mlp_bias)
        else:
            out.update(rope_interleave=self.rope_interleave)
        return out


class DeepseekLayer(nn.Module):
    def __init__(self, cfg: DeepseekConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MultiHeadLatentAttention(
            cfg.hidden_size, cfg.num_attention_heads, cfg.q_lora_rank, cfg.kv_lora_rank, cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim, cfg.v_head_dim, rope_interleave=cfg.rope_interleave, layer_idx=layer_idx,
            attention_bias=cfg.attention_bias, rope_config=cfg.rope)
        if layer_idx < cfg.first_k_dense_replace:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias, act=cfg.hidden_act)
        else:
            router = TopKRouter(cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.scoring,
                                cfg.topk_method, cfg.n_group, cfg.topk_group, cfg.norm_topk_prob,
                                cfg.routed_scaling_factor)
            self.mlp = MoE(cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts, cfg.n_shared_experts,
                           router, act=cfg.hidden_act, shared_bias=cfg.mlp_bias)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DeepseekLM(CausalLMBase):
    """input_ids [B, T] -> CausalLMOutput (logits [B, T, V]). With `cache` (a LatentKVCache from new_cache)
    attention runs the absorbed path over the cached latents; without, it up-projects full keys/values.
    Embeddings, norm, RoPE, lm_head, the input checks and generate are the decoder's (decoder.CausalLMBase)."""

    def __init__(self, cfg: DeepseekConfig):
        super().__init__(cfg, DeepseekLayer)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module, std: float = 0.02) -> None:
        """The decoder's N(0, 0.02) init, routers included, as transformers initialises DeepSeek.
        (Loading a checkpoint skips this: hub/checkpoint.py builds with initialisers disabled.)"""
        CausalLMBase._init_weights(module, std)
        if isinstance(module, TopKRouter):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    # -- generation-engine interface -------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> LatentKVCache:
        """Latent-only: (kv_lora_rank + qk_rope_head_dim) numbers per token and layer."""
        p = self.embed_tokens.weight
        return LatentKVCache(self.config.num_hidden_layers, batch_size, max_len, self.config.kv_lora_rank,
                             self.config.qk_rope_head_dim, dtype=p.dtype, device=p.device)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache: LatentKVCache | None = None,
                logits_to_keep: int = 0, **unused) -> CausalLMOutput:
        """attention_mask [B, T_k]: 1 for real tokens over cache + new tokens; position_ids [B, T] default to
        cache.length + arange(T); logits_to_keep=k computes only the last k; labels: next-token loss."""
        x, past, position_ids = self._start(input_ids, inputs_embeds, position_ids, cache, unused)  # [B, T, D]
        T = x.shape[1]
        rope = self.rotary_emb(position_ids, dtype=x.dtype)                         # 2 x [B, T, Dr]
        mask = build_attention_mask(T, past + T, attention_mask=attention_mask, device=x.device)
        for layer in self.layers:
            x = layer(x, rope, mask, cache)
        if cache is not None:
            cache.advance(T)
        h = self.norm(x)                                                            # [B, T, D]
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)     # [B, T|k, V]
        loss = None
        if labels is not None:
            if logits_to_keep:
                raise InputError("labels need the logits of every position; drop logits_to_keep")
            loss = causal_lm_loss(logits, labels)
        return CausalLMOutput(loss=loss, hidden_states=h, logits=logits)


def _kind(cfg: dict) -> str | None:
    """deepseek_v2 | deepseek_v3: config.json's model_type, else its architectures' (the hub's 4.x configs)."""
    return cfg.get("model_type") or next((k for k, a in ARCHITECTURE.items() if a in (cfg.get("architectures") or ())),
                                         None)


def mtp_keys(cfg: dict) -> tuple[str, ...]:
    """config.json -> the key pattern of its multi-token-prediction layers (layer indices num_hidden_layers ..
    num_hidden_layers + num_nextn_predict_layers - 1), which the load skips; () when there are none. A key of any
    other layer index past the decoder stays an unexpected key."""
    n = cfg.get("num_nextn_predict_layers", NEXTN_DEFAULT.get(_kind(cfg), 0))
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{_kind(cfg)} config num_nextn_predict_layers must be an int >= 0, got {n!r}")
    first = cfg["num_hidden_layers"]
    return (rf"model\.layers\.({'|'.join(str(first + k) for k in range(n))})\.",) if n else ()
