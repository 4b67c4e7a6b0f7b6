"""InternVL whose text model is Qwen3 (InternVL3.5's layout: InternVLForConditionalGeneration, text_config
model_type qwen3, per-head q/k RMSNorm, head_dim != hidden / heads, q/k/v/o biases): logits equal transformers' on a
batch with several tiles, greedy ids equal its generate, `ocellus.save` reopens in transformers with equal logits
and the text_config it writes names qwen3. The families whose text list once stopped at qwen2 (xGen-MM, Qwen-VL)
read a Qwen3 text_config through the same shared check."""
import json

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError
from ocellus.models.families.qwen_vl.modeling import build_qwen_vl
from ocellus.models.families.xgen_mm.modeling import build_xgen_mm
from _init import shift_biases_and_norms, spread_init
from test_internvl_parity import IMG, _batch

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
              patch_size=7, use_qk_norm=True, use_mean_pooling=False)
PER_TILE = (28 // 7 // 2) ** 2
QWEN3 = dict(model_type="qwen3", vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=24, attention_bias=True,
             max_position_embeddings=512, pad_token_id=0, eos_token_id=None, bos_token_id=None)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import transformers as tf
    cfg = tf.InternVLConfig(vision_config=VISION, text_config=QWEN3, image_token_id=IMG, downsample_ratio=0.5,
                            vision_feature_layer=-1, tie_word_embeddings=False)
    torch.manual_seed(0)
    ref = spread_init(tf.InternVLForConditionalGeneration(cfg).eval())   # attention far from uniform (_init.py)
    # q_norm / k_norm start at ones, biases at zero: shift them so reading either wrong moves the logits
    ref = shift_biases_and_norms(ref, also=("lambda", "cls_token", "position_embeddings"))
    path = tmp_path_factory.mktemp("internvl_qwen3")
    ref.save_pretrained(path)
    return ref, ocellus.load(path)


def test_logits_equal_transformers(pair):
    ref, ours = pair
    assert ours.language_model.config.qk_norm and ours.language_model.config.head_dim == 24
    ids, mask, pixels = _batch(PER_TILE)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


def test_generate_equals_transformers_and_save_reopens(pair, tmp_path):
    import transformers
    ref, ours = pair
    ids, mask, pixels = _batch(PER_TILE, tiles_per_image=((2, 1),))
    want = ref.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours.generate(ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=12), want)
    ocellus.save(ours, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["text_config"]["model_type"] == "qwen3" and written["architectures"] == ["InternVLForConditionalGeneration"]
    again = transformers.InternVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, pixel_values=pixels).logits,
                                   ours(input_ids=ids, pixel_values=pixels).logits, atol=1e-5, rtol=1e-5)


def _vit():
    return dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, image_size=28, patch_size=7)


@pytest.mark.parametrize("build,extra", [
    (build_xgen_mm, dict(image_token_index=IMG, image_grid_pinpoints=[[28, 56]])),
    (build_qwen_vl, dict(image_token_id=IMG, resampler={"num_queries": 4, "num_heads": 4}))], ids=["xgen_mm", "qwen_vl"])
def test_other_families_read_a_qwen3_text_config(build, extra):
    model = build({"vision_config": _vit(), "text_config": QWEN3, **extra})
    assert model.language_model.config.qk_norm and model.language_model.config.head_dim == 24
    with pytest.raises(ConfigError, match="text_config.model_type 'gemma'"):
        build({"vision_config": _vit(), "text_config": {**QWEN3, "model_type": "gemma"}, **extra})
