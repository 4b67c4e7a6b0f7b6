"""The ViT trains on its own (scikit-learn's digits, on CPU), rejects bad pixel_values with a typed
error that names the shape and the expectation, and its config/patch-embedding variants agree."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.models.vision import ViTClassifier, ViTConfig, VisionTransformer

TINY = dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4)


def _digits(n=512):
    """scikit-learn's 8x8 digits (shipped in the wheel), upsampled to 16x16, normalised to [-1, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16.0                 # [n, 1, 8, 8]
    x = F.interpolate(x, size=(16, 16), mode="nearest") * 2 - 1                         # [n, 1, 16, 16]
    return x, torch.tensor(d.target[:n])


@pytest.mark.parametrize("layout", ["clip", "siglip"])
def test_classifier_trains_on_digits(layout):
    """Head on the CLS token (CLIP layout) and on mean-pooled patches (SigLIP layout without its
    attention-pooling head); one block keeps 30 steps well under the time budget and still learns
    clearly (loss ratio ~0.5 over seeds; the MAP head learns slower, see the gradient test below)."""
    torch.manual_seed(0)
    kw = {**TINY, "num_channels": 1, "num_layers": 1}
    cfg = ViTConfig.clip(**kw) if layout == "clip" else ViTConfig.siglip(use_head=False, **kw)
    model = ViTClassifier(VisionTransformer(cfg), num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = _digits()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = model(x[idx], labels=y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert first > 2.0                     # starts near chance: ln(10) = 2.30
    assert last < 0.7 * first, losses      # and clearly learns


def test_classifier_trains_the_attention_pooling_head():
    model = ViTClassifier(VisionTransformer(ViTConfig.siglip(**TINY)), num_classes=3)
    model(torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 2])).loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad, no_grad


def test_classifier_logits_and_label_shape():
    model = ViTClassifier(VisionTransformer(ViTConfig.siglip(use_head=False, **TINY)), num_classes=5)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.logits.shape == (2, 5) and out.loss is None
    with pytest.raises(InputError, match=r"labels must be \[N\]=2"):
        model(torch.randn(2, 3, 16, 16), labels=torch.zeros(2, 1, dtype=torch.long))


def test_pooled_vector_and_classifier_read_the_right_tokens():
    """mean pooling averages the patches only (never CLS); a tower without a pooler is classified from its CLS
    token, and without one from the mean of its patches."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    mean = VisionTransformer(ViTConfig(**TINY, pooling="mean", post_layernorm=False)).eval()
    with torch.no_grad():
        out = mean(x)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 1:].mean(1))
    for cfg, pick in ((ViTConfig(**TINY, pooling="none", post_layernorm=False), lambda h: h[:, 0]),
                      (ViTConfig.siglip(use_head=False, **TINY), lambda h: h.mean(1))):
        model = ViTClassifier(VisionTransformer(cfg), num_classes=5).eval()
        with torch.no_grad():
            logits = model(x).logits
            expect = model.classifier(pick(model.encoder(x).last_hidden_state))
        torch.testing.assert_close(logits, expect)


@pytest.fixture(scope="module")
def vit():
    return VisionTransformer(ViTConfig.clip(**TINY)).eval()


@pytest.mark.parametrize("bad,expect", [
    (torch.randn(2, 1, 16, 16), r"has 1 channels \(shape \(2, 1, 16, 16\)\); this vision tower expects 3"),
    (torch.randn(3, 16, 16), r"must be 4-D \[N, 3, H, W\]; got shape \(3, 16, 16\)"),
    (torch.randn(1, 2, 3, 16, 16), r"must be 4-D \[N, 3, H, W\]; got shape \(1, 2, 3, 16, 16\)"),
    (torch.randn(2, 3, 18, 16), r"image size 18x16 \(pixel_values shape \(2, 3, 18, 16\)\) is not divisible by "
                                r"patch_size 4"),
    (torch.randn(2, 3, 20, 20), r"image size 20x20 .* differs from the model's 16x16; .*interpolate_pos_encoding"),
    (torch.randn(2, 3, 16, 20), r"image size 16x20 .* differs from the model's 16x16"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), r"must be floating point .* torch.uint8"),
])
def test_bad_pixel_values_raise_input_error(vit, bad, expect):
    with pytest.raises(InputError, match=expect):
        vit(bad)


def test_not_divisible_raises_even_with_interpolation(vit):
    with pytest.raises(InputError, match=r"18x18 .* not divisible by patch_size 4"):
        vit(torch.randn(1, 3, 18, 18), interpolate_pos_encoding=True)
    assert vit(torch.randn(1, 3, 24, 20), interpolate_pos_encoding=True).last_hidden_state.shape == (1, 1 + 30, 32)


def test_features_arguments_checked(vit):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"out of range: this tower has 3 hidden states"):
        vit.features(x, layer=-4)
    with pytest.raises(ConfigError, match=r"strategy 'cls_patch'"):
        vit.features(x, strategy="cls_patch")
    assert vit.features(x).shape == (1, 16, 32)
    assert vit.features(x, strategy="full").shape == (1, 17, 32)
    assert vit.num_patches(16, 16) == 16 and vit.num_tokens(16, 16, "full") == 17 and vit.num_tokens(16, 16) == 16


def test_linear_patch_embedding_equals_conv():
    """Linear patch embedding unfolds patches in (C, p, p) order, so it is the conv with its weight flattened."""
    torch.manual_seed(0)
    conv = VisionTransformer(ViTConfig.clip(**TINY)).eval()
    lin = VisionTransformer(ViTConfig.clip(patch_embed="linear", **TINY)).eval()
    sd = conv.state_dict()
    sd["embeddings.patch_embedding.weight"] = sd["embeddings.patch_embedding.weight"].flatten(1)
    lin.load_state_dict(sd)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(lin(x).last_hidden_state, conv(x).last_hidden_state)
        torch.testing.assert_close(lin(x, interpolate_pos_encoding=True).pooler_output,
                                   conv(x, interpolate_pos_encoding=True).pooler_output)


def test_config_from_composite_and_invalid():
    llava = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
             "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                               "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                               "patch_size": 14, "projection_dim": 768}}
    cfg = ViTConfig.from_hf(llava)
    assert (cfg.hidden_size, cfg.grid, cfg.num_layers, cfg.hidden_act, cfg.layer_norm_eps) == (1024, 24, 24,
                                                                                               "quick_gelu", 1e-5)
    assert cfg.use_cls_token and cfg.pre_layernorm and cfg.pooling == "cls"
    siglip = ViTConfig.from_hf({"model_type": "siglip", "vision_config": {"hidden_size": 64, "num_attention_heads": 4}})
    assert not siglip.use_cls_token and siglip.pooling == "map" and siglip.patch_size == 16
    assert siglip.to_hf()["architectures"] == ["SiglipVisionModel"]
    with pytest.raises(ConfigError, match="unsupported vision tower model_type 'dinov2'"):
        ViTConfig.from_hf({"model_type": "dinov2", "hidden_size": 64})
    with pytest.raises(ConfigError, match="neither CLIP's nor SigLIP's"):
        ViTConfig.clip(patch_embed="linear", **TINY).to_hf()
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        ViTConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="pooling='cls' needs use_cls_token"):
        ViTConfig(use_cls_token=False, pooling="cls")
