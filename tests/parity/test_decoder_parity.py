"""Logits of Ocellus' decoder equal transformers' Llama/Qwen2/Mistral/Qwen3 on tiny random checkpoints, for
the config variants real checkpoints use (tied embeddings, qkv bias, head_dim override, GQA/MQA,
every rope scaling type); and save -> transformers -> equal logits (round trip both ways)."""
import pytest
import torch

import ocellus
from _init import spread_init
from conftest import build_reference as _build_reference


def build_reference(kind: str, **overrides):
    """conftest's random reference with spread_init: attention far from uniform, logits std ~1."""
    return spread_init(_build_reference(kind, **overrides))

ROPES = {
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
}

VARIANTS = [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True}),
    ("llama", {"num_key_value_heads": 1}),                      # MQA
    ("llama", {"num_key_value_heads": 4}),                      # MHA
    ("llama", {"head_dim": 24}),                                # head_dim != hidden / heads
    ("llama", {"attention_bias": True, "mlp_bias": True}),
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
    *[("llama", {"rope_parameters": r}) for r in ROPES.values()],
    ("qwen2", {"rope_parameters": ROPES["yarn"]}),
    ("llama", {"partial_rotary_factor": 0.5}),                  # transformers' Llama rotates the whole head anyway
    ("mistral", {"head_dim": 24}),                              # Mistral's explicit head_dim != hidden / heads
    ("mistral", {"tie_word_embeddings": True, "num_key_value_heads": 1, "sliding_window": None}),
    ("mistral", {"attention_bias": True, "mlp_bias": True}),     # flags MistralForCausalLM does not read
    ("qwen2", {"mlp_bias": True}),                              # nor Qwen2's MLP
    ("qwen3", {"head_dim": 24}),                                # per-head q/k RMSNorm, head_dim != hidden / heads
    ("qwen3", {"attention_bias": True, "tie_word_embeddings": True, "num_key_value_heads": 1}),  # q/k/v/o biases
    ("qwen3", {"head_dim": 16, "num_key_value_heads": 4, "partial_rotary_factor": 0.5}),  # MHA; whole head rotated
]


def _ids(b=2, t=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (b, t), generator=g)


@pytest.mark.parametrize("kind,overrides", VARIANTS, ids=lambda v: str(v) if isinstance(v, str) else
                         "-".join(f"{k}" for k in v) or "base")
def test_logits_equal_transformers(kind, overrides, tmp_path):
    import transformers
    ref = build_reference(kind, **overrides)
    ref.save_pretrained(tmp_path / "ref")
    ours = ocellus.load(tmp_path / "ref")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)
    ocellus.save(ours, tmp_path / "ours")   # and back: the variant's config (rope, biases, head_dim) survives
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_dynamic_rope_past_trained_context(tmp_path):
    """Dynamic NTK changes frequencies once the sequence outgrows max_position_embeddings."""
    ref = build_reference("llama", max_position_embeddings=32, rope_parameters=ROPES["dynamic"])
    ref.save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    ids = _ids(1, 50)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_equal_with_explicit_positions(llama_dir):
    import transformers
    ref = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    ours = ocellus.load(llama_dir)
    ids = _ids(2, 16)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, position_ids=pos).logits
        b = ours(ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixture", ["llama_dir", "qwen2_dir"])
def test_save_reopens_in_transformers(fixture, request, tmp_path):
    import transformers
    src = request.getfixturevalue(fixture)
    ours = ocellus.load(src)
    ocellus.save(ours, tmp_path, max_shard_bytes=60_000)          # force several shards + index
    assert (tmp_path / "model.safetensors.index.json").exists()
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    again = ocellus.load(tmp_path)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(again(ids).logits, ours(ids).logits)


def test_dtype_and_loss(llama_dir):
    import transformers
    ours = ocellus.load(llama_dir, dtype="bfloat16")
    assert ours.embed_tokens.weight.dtype == torch.bfloat16
    ref = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    ours32 = ocellus.load(llama_dir)
    ids = _ids()
    labels = ids.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        torch.testing.assert_close(ours32(ids, labels=labels).loss, ref(ids, labels=labels).loss, atol=1e-5, rtol=1e-5)


def test_older_export_carrying_rotary_inv_freq_loads(llama_dir, tmp_path):
    """Llama exports written by transformers < 4.31 carry each layer's rotary `inv_freq` buffer: the key table
    drops it on load (not an unexpected tensor), and the logits are those of the same weights without it."""
    import shutil
    from safetensors.torch import load_file, save_file
    shutil.copytree(llama_dir, tmp_path, dirs_exist_ok=True)
    tensors = load_file(tmp_path / "model.safetensors")
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    for i in range(2):
        tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(ocellus.load(tmp_path)(ids).logits, ocellus.load(llama_dir)(ids).logits)
