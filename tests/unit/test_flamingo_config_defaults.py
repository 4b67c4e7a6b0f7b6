"""A Flamingo config.json that leaves the cross-attention and feature fields out builds open_flamingo's
defaults: GatedCrossAttentionBlock(dim_head=64, heads=8, ff_mult=4), and the vision tower's patch tokens
without CLS (open_flamingo reads the encoder's output tokens; vision_feature_select_strategy "default")."""
import torch

from ocellus.models.families.flamingo.modeling import build_flamingo
from test_flamingo import pixels, tiny_config


def test_left_out_fields_take_open_flamingo_defaults():
    cfg = tiny_config()
    del cfg["cross_attn_config"]
    torch.manual_seed(0)
    model = build_flamingo(cfg).eval()
    block = next(iter(model.gated_cross_attn.values()))
    fc1 = block.ff.mlp.fc1
    assert (block.attn.heads, block.attn.head_dim, fc1.out_features // fc1.in_features) == (8, 64, 4)
    assert (model.feature_layer, model.feature_select) == (-1, "default")
    with torch.no_grad():
        feats = model.image_features(pixels(model, 2))
    assert feats.shape[:2] == (2, (24 // 6) ** 2)          # a 4 x 4 patch grid, no CLS token
