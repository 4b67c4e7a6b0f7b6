"""One copy of the weights while packed (ocellus/infer/prepack.py): the packed tensor is the truth, and
everything that reads or changes a weight (state_dict / save, training, load_state_dict, LoRA, deepcopy,
.to, a direct read or replacement) sees or makes the plain weight first."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import ocellus
from ocellus.infer.prepack import PackedLinear, prepack_available, prepack_linears, weight_bytes
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.lora import inject_lora, merge_lora
from ocellus.nn.rope import RopeConfig

pytestmark = pytest.mark.skipif(not prepack_available(), reason="no oneDNN in this PyTorch build")


def model64(tied=False, bias=False, seed=0):
    """Sizes oneDNN packs without padding (multiples of 64): the memory bound is about the design, not padding."""
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=bias,
                        rope=RopeConfig.from_hf({}, 16), tie_word_embeddings=tied)
    model = DecoderLM(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.5)
    return model


IDS = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3))


def packed_count(model) -> int:
    return sum(isinstance(m, PackedLinear) for m in model.modules())


def logits(model):
    with torch.inference_mode():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("tied", [False, True])
def test_resident_weight_bytes_stay_one_copy(tied):
    model = model64(tied=tied)
    plain = weight_bytes(model)
    model.generate(IDS, max_new_tokens=2)                       # the default: packed fused weights
    assert packed_count(model) == 2 * 7 + (not tied)
    packed = weight_bytes(model)
    assert 0.9 * plain <= packed <= 1.25 * plain, (plain, packed)   # the old cache of a copy: 2x
    for m in model.modules():
        if isinstance(m, PackedLinear):
            assert m._parameters["weight"].untyped_storage().nbytes() == 4   # the plain storage is gone
            assert m._parameters["weight"].shape == (m.out_features, m.in_features)


def test_save_after_packing_writes_what_save_before_wrote(tmp_path):
    model = model64(bias=True)
    ocellus.save(model, tmp_path / "before")
    model.generate(IDS, max_new_tokens=2)
    assert packed_count(model) > 0
    ocellus.save(model, tmp_path / "after")
    assert packed_count(model) > 0                              # saving reads the packed weights, keeps them
    for name in sorted(p.name for p in (tmp_path / "before").glob("*.safetensors")):
        before, after = load_file(tmp_path / "before" / name), load_file(tmp_path / "after" / name)
        assert sorted(before) == sorted(after)
        for k in before:
            assert before[k].dtype == after[k].dtype and before[k].numpy().tobytes() == after[k].numpy().tobytes(), k


@pytest.mark.parametrize("how", ["train()", "grad-enabled forward", "only lm_head trained"])
def test_train_step_after_packing_equals_a_never_packed_one(how):
    """"only lm_head trained" (eval mode, grad on): lm_head's input needs no gradient, its weight does: unpacked."""
    model, never = model64(bias=True), model64(bias=True)
    if how == "only lm_head trained":
        for m in (model, never):
            m.requires_grad_(False)
            m.lm_head.weight.requires_grad_(True)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)                    # built before packing: must keep working
    opt_never = torch.optim.AdamW(never.parameters(), lr=1e-2)
    model.generate(IDS, max_new_tokens=2)
    assert packed_count(model) > 0
    if how == "train()":
        model.train()
        never.train()
        assert packed_count(model) == 0                         # train() unpacks, before any forward
    for m, o in ((model, opt), (never, opt_never)):
        loss = m(input_ids=IDS, labels=IDS).loss
        loss.backward()
        o.step()
        o.zero_grad()
    assert list(model.parameters()) == params and all(a is b for a, b in zip(model.parameters(), params))
    for (k, a), b in zip(model.state_dict().items(), never.state_dict().values()):
        assert torch.equal(a, b), k
    model.eval()
    never.eval()
    assert torch.equal(model.generate(IDS, max_new_tokens=6), never.generate(IDS, max_new_tokens=6, prepack=False))
    assert packed_count(model) > 0                              # ...and the next decode packs the new weights


def test_load_state_dict_and_in_place_updates_are_repacked():
    model, other = model64(bias=True, seed=0), model64(bias=True, seed=1)
    model.generate(IDS, max_new_tokens=2)
    model.load_state_dict(other.state_dict())
    assert torch.allclose(logits(model), logits(other), atol=1e-5)
    model.generate(IDS, max_new_tokens=2)
    assert packed_count(model) > 0
    assert torch.allclose(logits(model), logits(other), atol=1e-5)
    with torch.no_grad():                                        # a bias changed in place while packed
        model.layers[0].self_attn.k_proj.bias.add_(1.0)
        other.layers[0].self_attn.k_proj.bias.add_(1.0)
    assert packed_count(model) > 0 and torch.allclose(logits(model), logits(other), atol=1e-5)


def test_reading_or_replacing_a_weight_sees_the_plain_one():
    model, plain = model64(), model64()
    model.generate(IDS, max_new_tokens=2)
    q = model.layers[0].self_attn.q_proj
    assert torch.equal(q.weight, plain.layers[0].self_attn.q_proj.weight)   # read: unpacked, exact
    assert type(q) is nn.Linear and model.layers[0].self_attn.fused_qkv is None
    model.generate(IDS, max_new_tokens=2)
    assert isinstance(model.layers[1].mlp.down_proj, PackedLinear)
    new = torch.randn(64, 128)
    model.layers[1].mlp.down_proj._parameters["weight"].data = new.clone()    # replaced behind our back
    with torch.no_grad():
        plain.layers[1].mlp.down_proj.weight.copy_(new)
    assert torch.allclose(logits(model), logits(plain), atol=1e-5)


def test_lora_on_a_packed_model_then_merged_repacks():
    model, plain = model64(), model64()
    model.generate(IDS, max_new_tokens=2)
    targets = [r"layers\.\d\.self_attn\.(q|v)_proj"]
    for m in (model, plain):
        torch.manual_seed(5)                                     # the same adapters (A and B) in both
        inject_lora(m, targets, rank=2)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    assert torch.equal(model.layers[0].self_attn.q_proj.weight, plain.layers[0].self_attn.q_proj.weight)
    out = model.generate(IDS, max_new_tokens=6)                  # adapters stay plain; k_proj packs alone
    assert model.layers[0].self_attn.fused_qkv is None and isinstance(model.layers[0].self_attn.k_proj, PackedLinear)
    assert torch.equal(out, plain.generate(IDS, max_new_tokens=6, prepack=False))
    merge_lora(model)
    merge_lora(plain)
    out = model.generate(IDS, max_new_tokens=6)
    assert model.layers[0].self_attn.fused_qkv is not None       # merged: q|k|v fused again
    assert torch.equal(out, plain.generate(IDS, max_new_tokens=6, prepack=False))


def test_deepcopy_and_to_work_on_the_plain_weights():
    model, plain = model64(), model64()
    model.generate(IDS, max_new_tokens=2)
    twin = copy.deepcopy(model)
    assert packed_count(twin) == 0 and torch.allclose(logits(twin), logits(plain), atol=1e-5)
    model.generate(IDS, max_new_tokens=2)
    model.to(torch.float64)
    plain.to(torch.float64)
    assert packed_count(model) == 0 and torch.equal(logits(model), logits(plain))
