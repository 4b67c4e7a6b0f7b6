"""DeepSeek-V2 / V3 (models/text/deepseek.py) equal transformers' DeepseekV2ForCausalLM / DeepseekV3ForCausalLM:
logits for the config variants real checkpoints use (full-rank or low-rank query, greedy / group-limited /
noaux_tc routing, yarn RoPE with the softmax mscale, the hub's 4.x rope_scaling form, tied embeddings,
biases, left padding), greedy generation through the latent-only cache, and save -> transformers.

References are tiny random models drawn so nothing is near uniform: every matrix N(0, 1/fan_in)
(spread_init: q/k projections ~0.18 std, attention scores std ~1, router logits std ~1), norms
1 + N(0, 0.2), biases and V3's e_score_correction_bias N(0, 0.5). Measured on these models (atol 1e-4):
parity error <= 3e-6; a swapped RoPE half moves logits by 2.4-3.0, a dropped shared expert by 2.4-3.1
(test_tolerance_is_far_below_the_effect_of_a_broken_block keeps that margin >= 100x)."""
import json

import pytest
import torch

import ocellus
import ocellus.nn.rope as rope_module
from ocellus.nn.mla import LatentKVCache
from _init import spread_init

ATOL = 1e-4
SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
             num_attention_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=6,
             n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, max_position_embeddings=64,
             eos_token_id=None, bos_token_id=None)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
        "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1}


def reference(version: str, **overrides):
    """A tiny transformers DeepSeek model (V2: 4 experts, full-rank q; V3: 8 experts in 4 groups, q_lora 12)."""
    import transformers
    if version == "v2":
        cfg = transformers.DeepseekV2Config(**{**SMALL, "q_lora_rank": None, "n_routed_experts": 4, **overrides})
        model = transformers.DeepseekV2ForCausalLM(cfg)
    else:
        cfg = transformers.DeepseekV3Config(**{**SMALL, "q_lora_rank": 12, "n_routed_experts": 8, "n_group": 4,
                                               "topk_group": 2, **overrides})
        model = transformers.DeepseekV3ForCausalLM(cfg)
    spread_init(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("norm.weight", "layernorm.weight")):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            elif name.endswith(("bias", "e_score_correction_bias")):
                t.copy_(0.5 * torch.randn(t.shape, generator=g))
    return model.eval()


def _ids(b=2, t=24, seed=0):
    return torch.randint(0, 97, (b, t), generator=torch.Generator().manual_seed(seed))


def _pair(tmp_path, version, **overrides):
    ref = reference(version, **overrides)
    ref.save_pretrained(tmp_path)
    return ref, ocellus.load(tmp_path)


def _legacy_rope(path):
    """Rewrite a saved config.json's rope the way the hub's DeepSeek-V2 config.json spells it (transformers 4.x)."""
    cfg = json.loads((path / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    (path / "config.json").write_text(json.dumps(cfg))


VARIANTS = {
    "v2-greedy-full-rank-q": ("v2", {}),
    "v2-group-limited-lora-q-bias": ("v2", dict(topk_method="group_limited_greedy", n_routed_experts=8, n_group=4,
                                                topk_group=2, routed_scaling_factor=3.0, q_lora_rank=12,
                                                attention_bias=True, mlp_bias=True, n_shared_experts=2)),
    "v2-yarn-tied": ("v2", dict(rope_parameters=YARN, tie_word_embeddings=True, first_k_dense_replace=0)),
    "v3-noaux-interleaved": ("v3", {}),
    "v3-rotate-half-yarn-unnormalised-full-rank-q": ("v3", dict(rope_interleave=False, rope_parameters=YARN,
                                                                norm_topk_prob=False, q_lora_rank=None,
                                                                routed_scaling_factor=1.5, first_k_dense_replace=2)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_equal_transformers(variant, tmp_path):
    version, overrides = VARIANTS[variant]
    ref, ours = _pair(tmp_path, version, **overrides)
    assert type(ours).__name__ == "DeepseekLM" and ours.config.model_type == f"deepseek_{version}"
    ids = _ids(t=40)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)


def test_hub_v2_config_with_legacy_rope_scaling(tmp_path):
    """The hub's DeepSeek-V2 config.json: rope_theta + rope_scaling {"type": "yarn", mscale_all_dim, ...}."""
    ref = reference("v2", rope_parameters=YARN, topk_method="group_limited_greedy", n_routed_experts=8, n_group=4,
                    topk_group=2, routed_scaling_factor=16.0)
    ref.save_pretrained(tmp_path)
    _legacy_rope(tmp_path)
    ours = ocellus.load(tmp_path)
    assert ours.config.rope.rope_type == "yarn" and ours.layers[0].self_attn.softmax_scale > 20 ** -0.5
    ids = _ids(t=40)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)


def test_left_padded_batch_equal(tmp_path):
    ref, ours = _pair(tmp_path, "v3")
    ids = _ids(3, 16)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    mask[2, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, position_ids=pos).logits
        b = ours(ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=ATOL, rtol=0)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_tolerance_is_far_below_the_effect_of_a_broken_block(version, tmp_path, monkeypatch):
    """The parity tolerance must stay >= 100x below what a real bug does on these models: RoPE halves
    swapped (rotate_half turning the wrong way) and the shared experts dropped."""
    ref, ours = _pair(tmp_path, version)
    ids = _ids(t=40)
    with torch.no_grad():
        expected = ref(ids).logits
        for layer in ours.layers[1:]:
            layer.mlp.shared_experts.down_proj.weight.zero_()
        no_shared = (ours(ids).logits - expected).abs().max().item()
        ours = ocellus.load(tmp_path)
        monkeypatch.setattr(rope_module, "rotate_half", lambda x: torch.cat((x.chunk(2, -1)[1], -x.chunk(2, -1)[0]), -1))
        swapped = (ours(ids).logits - expected).abs().max().item()
    assert min(no_shared, swapped) > 100 * ATOL, (no_shared, swapped)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_greedy_generation_equal_transformers(version, tmp_path):
    ref, ours = _pair(tmp_path, version)
    ids = _ids(1, 9, seed=3)
    expected = ref.generate(ids, max_new_tokens=32, do_sample=False)
    got = ours.generate(ids, max_new_tokens=32)
    assert got.shape == (1, 41) and torch.equal(got, expected)


def test_left_padded_batch_generation_equal_transformers(tmp_path):
    ref, ours = _pair(tmp_path, "v2", topk_method="group_limited_greedy", n_routed_experts=8, n_group=4, topk_group=2)
    ids = _ids(3, 10, seed=4)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    expected = ref.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=16, pad_token_id=0), expected)


def test_generation_caches_only_the_latent_and_the_rope_key(tmp_path, monkeypatch):
    """The cache generation uses holds, per token and layer, kv_lora_rank + qk_rope_head_dim numbers (the
    latent c_kv and the rotated k_pe) and nothing else; what it holds is what the model computes for c_kv;
    decoding never up-projects per-head keys/values (the absorbed path)."""
    _, ours = _pair(tmp_path, "v3")
    c = ours.config
    made = []
    new_cache = ours.new_cache
    monkeypatch.setattr(ours, "new_cache", lambda b, n: made.append(new_cache(b, n)) or made[-1])
    for layer in ours.layers:      # the naive path (full per-head K/V) must not run once a cache is in use
        monkeypatch.setattr(layer.self_attn, "_naive", lambda *a: pytest.fail("decoding up-projected K/V"))
    prompt = _ids(1, 7, seed=5)
    out = ours.generate(prompt, max_new_tokens=5)
    cache, = made
    assert isinstance(cache, LatentKVCache) and set(vars(cache)) == {"c_kv", "k_pe", "max_len", "length"}
    tokens = 7 + 5
    assert cache.max_len == tokens and cache.length == tokens - 1      # the last token is never fed back
    per_token = c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    assert per_token == 3 * (16 + 8) * 4 == 288                           # bytes per token, fp32
    assert cache.nbytes() == tokens * per_token
    full_mha = c.num_hidden_layers * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * 4
    assert full_mha == 1056 and per_token * 1056 == full_mha * 288        # 3.7x smaller even at this tiny size

    # the cached latents are layer 0's c_kv = RMSNorm(W_DKV x)[:R] of the tokens generation fed in
    attn = ours.layers[0].self_attn
    with torch.no_grad():
        x = ours.layers[0].input_layernorm(ours.embed_tokens(out[:, :tokens - 1]))
        c_kv = attn.kv_a_layernorm(attn.kv_a_proj_with_mqa(x)[..., :c.kv_lora_rank])
    torch.testing.assert_close(cache.c_kv[0][:, :tokens - 1], c_kv, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_save_reopens_in_transformers(version, tmp_path):
    import transformers
    ref, ours = _pair(tmp_path / "src", version, tie_word_embeddings=version == "v2")
    ocellus.save(ours, tmp_path / "out", max_shard_bytes=40_000)        # several shards + index
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(ref)
    again = ocellus.load(tmp_path / "out")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)
        assert torch.equal(again(ids).logits, ours(ids).logits)
    if version == "v3":
        assert torch.equal(back.model.layers[2].mlp.gate.e_score_correction_bias,
                           ref.model.layers[2].mlp.gate.e_score_correction_bias)


def test_bf16_load_keeps_the_router_bias_fp32_and_loss_equals_transformers(tmp_path):
    ref, ours = _pair(tmp_path, "v3")
    half = ocellus.load(tmp_path, dtype="bfloat16")
    assert half.embed_tokens.weight.dtype == torch.bfloat16
    assert half.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32   # as transformers keeps it
    ids = _ids()
    labels = ids.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, labels=labels).loss, ref(ids, labels=labels).loss, atol=ATOL, rtol=0)
        assert half(ids).logits.dtype == torch.bfloat16
