"""Ocellus' ViT equals transformers' CLIPVisionModel / SiglipVisionModel on tiny random checkpoints:
last_hidden_state, pooler_output and every hidden state, at the native size and (with
interpolate_pos_encoding) at others; LLaVA-style feature selection; save -> transformers reopens
with equal outputs; the image tower of a full CLIPModel / SiglipModel checkpoint loads."""
import json

import pytest
import torch

from ocellus.errors import CheckpointError
from ocellus.models.families.vit.checkpoint import VISION_KEYS, load_vision, save_vision
from ocellus.models.vision import ViTConfig
from _init import shift_biases_and_norms, spread_init

VARIANTS = {
    "p4-i32-d64-h4": dict(patch_size=4, image_size=32, hidden_size=64, intermediate_size=112, num_attention_heads=4,
                          num_hidden_layers=4),
    "p8-i48-d48-h3": dict(patch_size=8, image_size=48, hidden_size=48, intermediate_size=80, num_attention_heads=3,
                          num_hidden_layers=5),
}


def build_reference(kind: str, **cfg):
    """A random transformers vision tower in fp32, eval(), with biases and norms randomised so that
    every parameter's handling is tested (they start at 0 / 1)."""
    import transformers as tf
    cfg_cls, model_cls = {"clip": (tf.CLIPVisionConfig, tf.CLIPVisionModel),
                          "siglip": (tf.SiglipVisionConfig, tf.SiglipVisionModel)}[kind]
    torch.manual_seed(0)
    model = spread_init(model_cls(cfg_cls(**cfg)).eval())   # attention far from uniform (tests/parity/_init.py)
    return shift_biases_and_norms(model)


def _pixels(n, h, w, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _assert_same(ours, ref):
    torch.testing.assert_close(ours.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-5)
    assert len(ours.hidden_states) == len(ref.hidden_states)
    for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"hidden_states[{i}]: {m}")


@pytest.fixture(scope="module", params=[(k, v) for k in ("clip", "siglip") for v in VARIANTS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, tmp_path_factory):
    kind, variant = request.param
    ref = build_reference(kind, **VARIANTS[variant])
    path = tmp_path_factory.mktemp(f"{kind}-{variant}")
    ref.save_pretrained(path)
    return ref, load_vision(path), path


@pytest.mark.parametrize("size", ["native", "larger", "smaller", "non-square", "wider"])
def test_outputs_equal_transformers(pair, size):
    ref, ours, _ = pair
    S, p = ref.config.image_size, ref.config.patch_size
    h, w = {"native": (S, S), "larger": (S + 2 * p, S + 2 * p), "smaller": (S - p, S - p),
            "non-square": (S + p, S - 2 * p), "wider": (S, S + 2 * p)}[size]   # wider: native height only
    interp = size != "native"
    x = _pixels(3, h, w)
    with torch.no_grad():
        r = ref(x, output_hidden_states=True, interpolate_pos_encoding=interp)
        o = ours(x, output_hidden_states=True, interpolate_pos_encoding=interp)
    n_tokens = (h // p) * (w // p) + (1 if ours.config.use_cls_token else 0)
    assert o.last_hidden_state.shape == (3, n_tokens, ref.config.hidden_size)
    _assert_same(o, r)
    with torch.no_grad():   # the plain call (no hidden states kept) gives the same outputs
        plain = ours(x, interpolate_pos_encoding=interp)
    torch.testing.assert_close(plain.last_hidden_state, r.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain.pooler_output, r.pooler_output, atol=1e-5, rtol=1e-5)


def test_native_size_with_interpolation_flag_is_unchanged(pair):
    ref, ours, _ = pair
    S = ref.config.image_size
    x = _pixels(2, S, S, seed=1)
    with torch.no_grad():
        _assert_same(ours(x, output_hidden_states=True, interpolate_pos_encoding=True),
                     ref(x, output_hidden_states=True, interpolate_pos_encoding=True))
        torch.testing.assert_close(ours(x, interpolate_pos_encoding=True).last_hidden_state,
                                   ours(x).last_hidden_state, atol=0, rtol=0)


def test_features_select_hf_hidden_states(pair):
    """features() = LLaVA's selection over transformers' hidden_states; 'default' drops CLS (CLIP only)."""
    ref, ours, _ = pair
    S = ref.config.image_size
    x = _pixels(2, S, S, seed=2)
    with torch.no_grad():
        hs = ref(x, output_hidden_states=True).hidden_states
        for layer in (-2, -1, 0, 2, [-2, -5], [-1, 1, 0]):
            for strategy in ("default", "full"):
                got = ours.features(x, layer=layer, strategy=strategy)
                drop = 1 if strategy == "default" and ours.config.use_cls_token else 0
                layers = [layer] if isinstance(layer, int) else layer
                want = torch.cat([hs[i][:, drop:] for i in layers], dim=-1)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5,
                                           msg=lambda m: f"layer={layer} strategy={strategy}: {m}")
                assert got.shape[1] == ours.num_tokens(S, S, strategy)


def test_features_at_other_resolution(pair):
    ref, ours, _ = pair
    S, p = ref.config.image_size, ref.config.patch_size
    x = _pixels(2, S + p, S + 3 * p, seed=3)
    with torch.no_grad():
        hs = ref(x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        got = ours.features(x, layer=[-2, -3], strategy="full", interpolate_pos_encoding=True)
    torch.testing.assert_close(got, torch.cat([hs[-2], hs[-3]], dim=-1), atol=1e-5, rtol=1e-5)


def test_save_reopens_in_transformers(pair, tmp_path):
    ref, ours, _ = pair
    save_vision(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == [type(ref).__name__]
    back, info = type(ref).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    S = ref.config.image_size
    x = _pixels(2, S, S, seed=4)
    with torch.no_grad():
        _assert_same(ours(x, output_hidden_states=True), back.eval()(x, output_hidden_states=True))
        again = load_vision(tmp_path)   # and our own, prefixed, format loads back
        _assert_same(again(x, output_hidden_states=True), ours(x, output_hidden_states=True))
    assert again.config == ours.config


def test_config_round_trip(pair):
    ref, ours, _ = pair
    again = ViTConfig.from_hf(ours.config.to_hf())
    assert again == ours.config
    assert ours.config.hidden_size == ref.config.hidden_size and ours.config.num_layers == ref.config.num_hidden_layers


def test_siglip_without_head(tmp_path):
    ref = build_reference("siglip", **VARIANTS["p4-i32-d64-h4"], vision_use_head=False)
    ref.save_pretrained(tmp_path)
    ours = load_vision(tmp_path)
    assert ours.head is None and ours.config.pooling == "none"
    x = _pixels(2, 32, 32)
    with torch.no_grad():
        r, o = ref(x, output_hidden_states=True), ours(x, output_hidden_states=True)
    assert r.pooler_output is None and o.pooler_output is None
    torch.testing.assert_close(o.last_hidden_state, r.last_hidden_state, atol=1e-5, rtol=1e-5)
    save_vision(ours, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vision_use_head"] is False


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_image_tower_of_full_contrastive_checkpoint(kind, tmp_path):
    """CLIPModel / SiglipModel dirs: the vision tower loads, text tower and projections are dropped."""
    import transformers as tf
    cfg_cls, model_cls = {"clip": (tf.CLIPConfig, tf.CLIPModel), "siglip": (tf.SiglipConfig, tf.SiglipModel)}[kind]
    small = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    ref = model_cls(cfg_cls(text_config=dict(vocab_size=50, max_position_embeddings=16, **small),
                            vision_config=dict(image_size=16, patch_size=4, **small))).eval()
    ref.save_pretrained(tmp_path)
    ours = load_vision(tmp_path)
    x = _pixels(2, 16, 16)
    with torch.no_grad():
        _assert_same(ours(x, output_hidden_states=True), ref.vision_model(x, output_hidden_states=True))


def test_strict_load_names_missing_and_unexpected(tmp_path):
    from safetensors.torch import load_file, save_file
    ref = build_reference("clip", **VARIANTS["p4-i32-d64-h4"])
    ref.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    t = load_file(f)
    t.pop(next(k for k in t if k.endswith("layers.1.mlp.fc2.weight")))
    t["embeddings.stray"] = torch.zeros(1)
    save_file(t, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"(?s)missing.*layers\.1\.mlp\.fc2\.weight.*unexpected.*stray"):
        load_vision(tmp_path)


def test_key_table_both_forms():
    assert VISION_KEYS.to_ours("vision_model.encoder.layers.3.self_attn.out_proj.bias") == "layers.3.self_attn.o_proj.bias"
    assert VISION_KEYS.to_ours("encoder.layers.3.self_attn.out_proj.bias") == "layers.3.self_attn.o_proj.bias"
    assert VISION_KEYS.to_ours("vision_model.pre_layrnorm.weight") == "pre_layernorm.weight"
    assert VISION_KEYS.to_theirs("layers.0.mlp.fc1.weight") == "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert VISION_KEYS.to_theirs("head.attention.in_proj_weight") == "vision_model.head.attention.in_proj_weight"
    assert VISION_KEYS.dropped("vision_model.embeddings.position_ids")


def test_ocellus_load_and_save_once_registered(pair, tmp_path, monkeypatch):
    """What families.py gets by calling register(ARCHITECTURES): ocellus.load / ocellus.save work."""
    import ocellus
    from ocellus.hub import families
    from ocellus.models.families.vit.checkpoint import register
    monkeypatch.setattr(families, "ARCHITECTURES", register(dict(families.ARCHITECTURES)))
    ref, ours, path = pair
    model = ocellus.load(path)
    S = ref.config.image_size
    x = _pixels(2, S, S, seed=5)
    with torch.no_grad():
        _assert_same(model(x, output_hidden_states=True), ours(x, output_hidden_states=True))
    ocellus.save(model, tmp_path)
    back = type(ref).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-5, rtol=1e-5)
