"""InternViT.num_tokens (the tower interface every ViT has: how many feature rows features() returns) agrees
with features() for both select strategies, square and non-square tiles: 'full' keeps CLS (+1)."""
import pytest
import torch

from ocellus.models.vision.intern_vit import InternViT, InternViTConfig


@pytest.mark.parametrize("strategy", ["default", "full"])
@pytest.mark.parametrize("hw", [(28, 28), (14, 42)])
def test_num_tokens_counts_the_rows_features_returns(strategy, hw):
    torch.manual_seed(0)
    vit = InternViT(InternViTConfig(image_size=28, patch_size=7, hidden_size=16, intermediate_size=32, num_layers=1,
                                    num_heads=2)).eval()
    with torch.no_grad():
        feats = vit.features(torch.randn(2, 3, *hw), strategy=strategy)
    assert vit.num_tokens(*hw, strategy=strategy) == feats.shape[1]
