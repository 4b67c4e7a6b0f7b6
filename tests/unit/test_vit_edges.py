"""The ViT's edges beyond the main unit and parity tests: a width (not only a height) that the patch does
not divide is refused even when positions are interpolated; 'full' features count a CLS token only for a
tower that has one; the last hidden state (index L) is a valid feature layer; and a LLaVA config without a
vision_config builds transformers' default tower (CLIP ViT-L/14 at 336 px); a headless SigLIP tower built here
saves as headless (transformers' default is a head)."""
import pytest
import torch

from ocellus.errors import InputError
from ocellus.models.vision import ViTConfig, VisionTransformer

TINY = dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4)


def test_a_width_the_patch_does_not_divide_is_refused_with_interpolation():
    vit = VisionTransformer(ViTConfig.clip(**TINY)).eval()
    with pytest.raises(InputError, match=r"16x18 .* not divisible by patch_size 4"):
        vit(torch.randn(1, 3, 16, 18), interpolate_pos_encoding=True)


@pytest.mark.parametrize("layout", ["clip", "siglip"])
def test_full_features_count_cls_only_when_the_tower_has_one(layout):
    cfg = ViTConfig.clip(**TINY) if layout == "clip" else ViTConfig.siglip(use_head=False, **TINY)
    vit = VisionTransformer(cfg).eval()
    with torch.no_grad():
        full = vit.features(torch.randn(1, 3, 16, 16), strategy="full")
    assert vit.num_tokens(16, 16, "full") == full.shape[1] == 16 + (layout == "clip")


def test_feature_layer_L_is_the_last_hidden_state():
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig.clip(**TINY)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        hidden = vit(x, output_hidden_states=True).hidden_states
        torch.testing.assert_close(vit.features(x, layer=2, strategy="full"), hidden[2])
        torch.testing.assert_close(vit.features(x, layer=[0, 2]), torch.cat([hidden[0][:, 1:], hidden[2][:, 1:]], -1))


def test_llava_config_without_vision_config_is_transformers_default_tower():
    import transformers as tf
    ref = tf.LlavaConfig().vision_config
    ours = ViTConfig.from_hf({"model_type": "llava"})
    assert (ours.image_size, ours.patch_size, ours.hidden_size, ours.intermediate_size, ours.num_layers,
            ours.num_heads, ours.hidden_act, ours.layer_norm_eps) == (
        ref.image_size, ref.patch_size, ref.hidden_size, ref.intermediate_size, ref.num_hidden_layers,
        ref.num_attention_heads, ref.hidden_act, ref.layer_norm_eps)


def test_siglip_tower_without_head_built_here_saves_as_headless(tmp_path):
    """A SigLIP layout made from numbers (no source config.json): the saved config says vision_use_head false,
    so transformers (whose default is a head) reopens it without one, nothing missing, same outputs."""
    import json

    import transformers as tf
    from ocellus.models.families.vit.checkpoint import save_vision
    torch.manual_seed(0)
    ours = VisionTransformer(ViTConfig.siglip(use_head=False, **TINY)).eval()
    save_vision(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vision_use_head"] is False
    back, info = tf.SiglipVisionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x).last_hidden_state, ours(x).last_hidden_state, atol=1e-5, rtol=1e-5)
