"""InternVL from a config.json that leaves the defaults out: the missing fields take transformers' defaults.

Hub configs written by older transformers (or by hand) omit fields at their default value; transformers
fills them from InternVLConfig / InternVLVisionConfig. The checkpoint below is saved by transformers, then
every vision_config field and every top-level field equal to transformers' default is deleted from
config.json: Ocellus must read the same model (final LayerNorm or mean pooling, projector activation,
feature layer and strategy, tied embeddings) and give the same logits.
"""
import json

import torch

import ocellus
from test_internvl_parity import _batch, _per_tile, _reference


def _strip_defaults(path):
    import transformers as tf
    cfg = json.loads((path / "config.json").read_text())
    vdef = tf.InternVLVisionConfig().to_dict()
    cfg["vision_config"] = {k: v for k, v in cfg["vision_config"].items()
                            if k == "model_type" or k not in vdef or vdef[k] != v}
    top = tf.InternVLConfig().to_dict()
    dropped = [k for k, v in cfg.items() if k in top and not isinstance(v, dict) and k != "model_type" and top[k] == v]
    for k in dropped:
        del cfg[k]
    (path / "config.json").write_text(json.dumps(cfg))
    return cfg, dropped


def test_logits_equal_transformers_when_config_json_omits_the_defaults(tmp_path):
    case = dict(vision=dict(image_size=28, patch_size=7), text="qwen2", tie=True, layer=-1)
    ref = _reference(**case)
    ref.save_pretrained(tmp_path)
    cfg, dropped = _strip_defaults(tmp_path)
    assert "use_mean_pooling" not in cfg["vision_config"] and "projector_hidden_act" in dropped
    ours = ocellus.load(tmp_path)
    ids, mask, pixels = _batch(_per_tile(case), size=28)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)
