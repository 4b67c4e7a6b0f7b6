"""BLIP-2 paths the main parity file (test_blip2_parity.py) does not reach, against transformers'
Blip2ForConditionalGeneration: a config.json naming the placeholder image_token_id (the alias transformers'
Blip2Config maps to image_token_index) loads and gives its logits, and images at another size than the
tower's, with interpolate_pos_encoding=True, give transformers' logits (the flag reaches the ViT)."""
import json

import torch

import ocellus
from test_blip2_parity import CONFIGS, IMG, _batch, _reference


def _logits(model, ids, mask, pixels, **kw):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos, **kw).logits


def test_config_with_image_token_id_alias(tmp_path):
    import transformers as tf
    case = CONFIGS[0]
    _reference(**case).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["image_token_id"] = cfg.pop("image_token_index")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ref = tf.Blip2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert ref.config.image_token_index == IMG
    ours = ocellus.load(tmp_path)
    ids, mask, pixels = _batch(case["queries"], case["image_size"])
    real = mask.bool()
    torch.testing.assert_close(_logits(ours, ids, mask, pixels)[real], _logits(ref, ids, mask, pixels)[real],
                               atol=1e-5, rtol=1e-5)


def test_other_image_size_with_interpolated_positions(tmp_path):
    case = CONFIGS[0]                      # a 32 px tower of 8 px patches, fed 48 px images (6 x 6 patches)
    ref = _reference(**case)
    ref.save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    ids, mask, _ = _batch(case["queries"], case["image_size"])
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    real = mask.bool()
    torch.testing.assert_close(_logits(ours, ids, mask, pixels, interpolate_pos_encoding=True)[real],
                               _logits(ref, ids, mask, pixels, interpolate_pos_encoding=True)[real],
                               atol=1e-5, rtol=1e-5)
