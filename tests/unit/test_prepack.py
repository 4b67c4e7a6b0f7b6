"""Prepacked oneDNN weights (ocellus/infer/prepack.py): same outputs, never stale, invisible to saving."""
import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.infer import prepack
from ocellus.infer.prepack import PackedLinear, prepack_available, prepack_linears, prepack_supports
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.rope import RopeConfig

pytestmark = pytest.mark.skipif(not prepack_available(), reason="no oneDNN in this PyTorch build")


def tiny(dtype=torch.float32, tied=True, seed=0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        rope=RopeConfig.from_hf({}, 8), tie_word_embeddings=tied)
    return DecoderLM(cfg).to(dtype).eval()


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.0)])
def test_same_logits_and_greedy_ids(dtype, atol):
    if not prepack_supports(dtype):
        pytest.skip(f"this CPU has no oneDNN {dtype} kernels (AVX2 only)")
    model = tiny(dtype)
    ids = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, ref_ids = model(input_ids=ids).logits, model.generate(ids, max_new_tokens=12)
        prepack_linears(model, batch_size=3)
        out = model(input_ids=ids).logits
        assert torch.allclose(out.float(), ref.float(), atol=atol, rtol=0)
        assert torch.equal(model.generate(ids, max_new_tokens=12), ref_ids)
    n_linear = 2 * 7 + 1  # q k v o gate up down per layer + lm_head
    assert sum(isinstance(m, PackedLinear) for m in model.modules()) == n_linear


def test_parameters_tying_and_state_dict_unchanged():
    model = tiny(tied=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {id(p) for p in model.parameters()}
    prepack_linears(model)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert {id(p) for p in model.parameters()} == params
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_weights_changed_in_place_are_repacked():
    """An optimizer step (in place) and load_state_dict must show in the next inference forward."""
    model, fresh = tiny(seed=0), tiny(seed=0)
    prepack_linears(model, batch_size=2)
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(2))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss       # autograd on: the plain-weight path
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.eval()
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids).logits, fresh(input_ids=ids).logits, atol=1e-5)
    other = tiny(seed=1)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids).logits, other(input_ids=ids).logits, atol=1e-5)


def test_repack_for_another_batch_size_and_bad_dtype():
    model = prepack_linears(tiny(), batch_size=1)
    prepack_linears(model, batch_size=8)
    assert {m.batch_size for m in model.modules() if isinstance(m, PackedLinear)} == {8}
    with pytest.raises(ConfigError, match="float16"):
        prepack_linears(tiny().to(torch.float16))


def test_bf16_on_a_cpu_without_onednn_bf16_is_a_clear_error(monkeypatch):
    """An AVX2-only CPU: oneDNN cannot reorder bf16 weights; say so before touching the model."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    model = tiny(torch.bfloat16)
    with pytest.raises(ConfigError, match="bfloat16 kernels"):
        prepack_linears(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert prepack.prepack_supports(torch.float32)
