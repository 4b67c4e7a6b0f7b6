"""Early-fusion splice and the connectors."""
import pytest
import torch

from ocellus.errors import InputError
from ocellus.models.connectors import MLPProjector, PixelShuffleProjector, pixel_shuffle
from ocellus.models.fusion import splice

IMG = 9


def test_splice_places_features_in_order_across_samples_and_images():
    ids = torch.tensor([[1, IMG, IMG, 2, IMG, 3],     # sample 0: image a (2 tokens) then image b (1 token)
                        [4, 5, 6, 7, 8, 1],           # sample 1: no image
                        [IMG, IMG, IMG, 2, 2, 2]])    # sample 2: image c (3 tokens)
    emb = torch.zeros(3, 6, 4)
    feats = torch.arange(6 * 4, dtype=torch.float).view(6, 4) + 1
    out = splice(emb, ids, IMG, feats, tokens_per_image=[2, 1, 3])
    assert torch.equal(out[0, [1, 2, 4]], feats[:3])
    assert torch.equal(out[2, :3], feats[3:])
    assert torch.equal(out[1], emb[1])
    assert torch.equal(out[0, [0, 3, 5]], torch.zeros(3, 4))


def test_splice_without_images_is_identity():
    emb = torch.randn(2, 5, 4)
    assert splice(emb, torch.ones(2, 5, dtype=torch.long), IMG, torch.zeros(0, 4), []) is emb


def test_splice_mismatch_names_the_sample():
    ids = torch.tensor([[1, IMG, IMG, 2], [IMG, 2, 2, 2]])
    with pytest.raises(InputError, match="sample 1: 1 image placeholder tokens, but its images provide 2"):
        splice(torch.zeros(2, 4, 3), ids, IMG, torch.zeros(4, 3), tokens_per_image=[2, 2])
    with pytest.raises(InputError, match="2 images given, fewer <image> placeholders"):
        splice(torch.zeros(1, 4, 3), ids[:1], IMG, torch.zeros(4, 3), tokens_per_image=[2, 2])


def test_mlp_projector_depths():
    x = torch.randn(2, 5, 8)
    lin = MLPProjector(8, 16, depth=1)
    torch.testing.assert_close(lin(x), x @ lin.linear_1.weight.T + lin.linear_1.bias)
    mlp = MLPProjector(8, 16, depth=2)
    ref = torch.nn.functional.gelu(x @ mlp.linear_1.weight.T + mlp.linear_1.bias) @ mlp.linear_2.weight.T + mlp.linear_2.bias
    torch.testing.assert_close(mlp(x), ref)


def test_pixel_shuffle_groups_2x2_windows():
    grid = torch.arange(16, dtype=torch.float).view(1, 16, 1)        # 4x4 grid, channel = index
    out = pixel_shuffle(grid, 2)
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0, 1, 4, 5]                         # top-left 2x2 window
    assert out[0, 3].tolist() == [10, 11, 14, 15]
    assert PixelShuffleProjector(3, 8)(torch.randn(2, 16, 3)).shape == (2, 4, 8)
    with pytest.raises(InputError, match="square patch grid"):
        pixel_shuffle(torch.zeros(1, 12, 1), 2)
