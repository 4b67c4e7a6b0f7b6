"""DeepSeekMoE (nn/moe.py) and the DeepSeek config (models/text/deepseek.py): each router variant against its
formula written out token by token, the routers against transformers' DeepseekV2/V3TopkRouter, the MoE block
against shared + weighted experts by hand, and every refused config a ConfigError naming the field."""
import math

import pytest
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.models.text.deepseek import DeepseekConfig, DeepseekLM
from ocellus.nn.moe import MoE, TopKRouter


def _router(method, E=8, k=2, n_group=4, topk_group=2, norm=False, scale=1.0, seed=0):
    scoring = "sigmoid" if method == "noaux_tc" else "softmax"
    r = TopKRouter(16, E, k, scoring, method, n_group, topk_group, norm, scale)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        r.weight.copy_(torch.randn(E, 16, generator=g) / 4)
        if method == "noaux_tc":
            r.e_score_correction_bias.copy_(torch.randn(E, generator=g) * 0.5)
    return r


def _by_hand(x, r):
    """The router's formula for one token at a time, in plain Python lists."""
    E, G = r.num_experts, r.n_group
    out_w, out_e = [], []
    for row in x:
        logits = [float(row @ r.weight[e].detach()) for e in range(E)]
        if r.scoring == "softmax":
            z = sum(math.exp(v) for v in logits)
            s = [math.exp(v) / z for v in logits]
        else:
            s = [1 / (1 + math.exp(-v)) for v in logits]
        choice = s if r.topk_method != "noaux_tc" else [s[e] + float(r.e_score_correction_bias[e]) for e in range(E)]
        allowed = set(range(E))
        if r.topk_method != "greedy":
            size = E // G
            groups = [choice[i * size:(i + 1) * size] for i in range(G)]
            rank = [max(gr) if r.topk_method == "group_limited_greedy" else sum(sorted(gr)[-2:]) for gr in groups]
            best = sorted(range(G), key=lambda i: -rank[i])[:r.topk_group]
            allowed = {e for e in range(E) if e // size in best}
        picked = sorted(allowed, key=lambda e: -choice[e])[:r.top_k]
        w = [s[e] for e in picked]                       # the unbiased score weighs, the biased one chooses
        if r.norm_topk_prob:
            w = [v / sum(w) for v in w]
        out_w.append([v * r.routed_scaling_factor for v in w])
        out_e.append(picked)
    return out_w, out_e


def _sorted(w, e):
    """Order each token's picks by expert id (top-k order is not part of the result)."""
    order = e.argsort(dim=-1)
    return w.gather(1, order), e.gather(1, order)


@pytest.mark.parametrize("method,norm,scale", [("greedy", False, 1.0), ("group_limited_greedy", False, 16.0),
                                               ("noaux_tc", True, 2.5), ("noaux_tc", False, 1.0)])
def test_router_equals_its_formula(method, norm, scale):
    r = _router(method, norm=norm, scale=scale)
    x = torch.randn(12, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w, e = _sorted(*r(x))
    hand_w, hand_e = _by_hand(x, r)
    hw, he = _sorted(torch.tensor(hand_w), torch.tensor(hand_e))
    assert torch.equal(e, he)
    torch.testing.assert_close(w, hw, atol=1e-6, rtol=1e-5)


def test_noaux_bias_changes_the_choice_but_not_the_weight():
    r = _router("noaux_tc", n_group=1, topk_group=1)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        w, e = _sorted(*r(x))
        r.e_score_correction_bias.zero_()
        w0, e0 = _sorted(*r(x))
    assert not torch.equal(e, e0)                         # the bias moved some tokens to other experts
    scores = torch.sigmoid(x @ r.weight.detach().T)
    torch.testing.assert_close(w, scores.gather(1, e))    # ... and weighs them by the unbiased score


@pytest.mark.parametrize("version,method", [("v2", "greedy"), ("v2", "group_limited_greedy"), ("v3", "noaux_tc")])
def test_router_equals_transformers(version, method):
    import transformers
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
    kw = dict(hidden_size=16, num_attention_heads=2, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
              routed_scaling_factor=2.0)
    if version == "v2":
        ref = DeepseekV2TopkRouter(transformers.DeepseekV2Config(topk_method=method, **kw))
    else:
        ref = DeepseekV3TopkRouter(transformers.DeepseekV3Config(norm_topk_prob=True, **kw))
    ours = _router(method, k=3, norm=version == "v3", scale=2.0, seed=3)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
        if version == "v3":
            ref.e_score_correction_bias.copy_(ours.e_score_correction_bias)
        x = torch.randn(20, 16, generator=torch.Generator().manual_seed(4))
        _, ref_w, ref_e = ref(x)
        w, e = _sorted(*ours(x))
    rw, re_ = _sorted(ref_w, ref_e)
    assert torch.equal(e, re_)
    torch.testing.assert_close(w, rw, atol=1e-6, rtol=1e-6)


def test_moe_is_shared_plus_weighted_routed_experts():
    torch.manual_seed(0)
    moe = MoE(16, 8, 8, 2, _router("noaux_tc", norm=True, scale=2.5), shared_bias=True)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = moe(x)
        w, e = moe.gate(x.reshape(-1, 16))
        rows = []
        for n, token in enumerate(x.reshape(-1, 16)):
            out = moe.shared_experts(token)
            for slot in range(2):
                out = out + w[n, slot] * moe.experts[int(e[n, slot])](token)
            rows.append(out)
    assert moe.shared_experts.down_proj.weight.shape == (16, 16)   # n_shared x moe_intermediate wide
    torch.testing.assert_close(y, torch.stack(rows).view(2, 5, 16), atol=1e-6, rtol=1e-5)


# -- configs -------------------------------------------------------------------------------------------------
V2 = dict(model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"], vocab_size=50, hidden_size=16,
          intermediate_size=24, moe_intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
          q_lora_rank=None, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4, n_routed_experts=4,
          num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1)
V3 = {**V2, "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "q_lora_rank": 6,
      "n_group": 2, "topk_group": 1}


def test_config_round_trips_and_reads_transformers_defaults():
    for cfg in (V2, V3, {**V3, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                                                   "original_max_position_embeddings": 16, "mscale_all_dim": 1.0}}):
        c = DeepseekConfig.from_hf(cfg)
        assert DeepseekConfig.from_hf(c.to_hf()) == c
    v2, v3 = DeepseekConfig.from_hf(V2), DeepseekConfig.from_hf(V3)
    assert (v2.scoring, v2.topk_method, v2.norm_topk_prob, v2.routed_scaling_factor) == ("softmax", "greedy", False, 1.0)
    assert (v3.scoring, v3.topk_method, v3.norm_topk_prob, v3.routed_scaling_factor) == ("sigmoid", "noaux_tc", True, 2.5)
    # the classes' default eos (2, 1) is none to transformers' generate: tests/parity/test_decoder_config_fuzz.py
    assert v2.rope_interleave and v3.rope_interleave and v2.eos_token_id == v3.eos_token_id == ()


@pytest.mark.parametrize("base,change,match", [
    (V2, {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope 'linear'"),
    (V3, {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, "rope 'dynamic'"),
    (V3, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    (V2, {"norm_topk_prob": True}, "norm_topk_prob"),
    (V2, {"topk_method": "noaux_tc"}, "topk_method 'noaux_tc'"),
    (V3, {"topk_method": "greedy"}, "topk_method 'greedy'"),
    (V2, {"scoring_func": "sigmoid"}, "scoring_func 'sigmoid'"),
    (V2, {"topk_method": "group_limited_greedy", "n_group": 3, "topk_group": 1}, "n_group=3"),
    (V3, {"topk_group": 3}, "topk_group=3 exceeds"),
    (V3, {"n_group": 4, "topk_group": 1}, "top-2"),
    (V3, {"num_experts_per_tok": 3}, "num_experts_per_tok=3 exceeds the 2"),
    (V3, {"n_group": None}, "n_group"),
    (V2, {"moe_layer_freq": 2}, "moe_layer_freq"),
    (V2, {"first_k_dense_replace": -1}, "first_k_dense_replace"),
    (V2, {"n_shared_experts": 0}, "n_shared_experts"),
    (V2, {"q_lora_rank": 0}, "q_lora_rank"),
    (V2, {"kv_lora_rank": 0}, "kv_lora_rank"),
    (V3, {"qk_rope_head_dim": 3}, "must be even"),
    (V2, {"model_type": "llama"}, "model_type 'llama'"),
])
def test_refused_configs_name_the_field(base, change, match):
    with pytest.raises(ConfigError, match=match):
        DeepseekLM(DeepseekConfig.from_hf({**base, **change}))


def test_missing_field_is_named():
    cfg = dict(V2)
    del cfg["kv_lora_rank"]
    with pytest.raises(ConfigError, match="kv_lora_rank"):
        DeepseekConfig.from_hf(cfg)


def test_out_of_vocabulary_ids_are_an_input_error():
    model = DeepseekLM(DeepseekConfig.from_hf(V3)).eval()
    with pytest.raises(InputError, match="outside"):
        model(torch.tensor([[1, 50]]))
    assert model(torch.tensor([[1, 49]])).logits.shape == (1, 2, 50)


def test_int8_kv_b_proj_is_refused_when_decoding():
    """quantize='int8' turns kv_b_proj into an int8 layer; the absorbed path reads its weight directly, so
    decoding must refuse it by name rather than multiply raw int8 codes."""
    from ocellus.nn.quant import Int8Linear, replace_module
    model = DeepseekLM(DeepseekConfig.from_hf(V3)).eval()
    for i, layer in enumerate(model.layers):
        replace_module(model, f"layers.{i}.self_attn.kv_b_proj", Int8Linear.from_linear(layer.self_attn.kv_b_proj))
    ids = torch.tensor([[1, 2, 3]])
    assert model(ids).logits.shape == (1, 3, 50)            # the naive path calls the layer: still fine
    with pytest.raises(ConfigError, match="kv_b_proj"):
        model.generate(ids, max_new_tokens=2)
