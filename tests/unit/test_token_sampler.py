"""BLIP-3 / xGen-MM any-resolution token sampling: per-view perceiver, tokens concatenated per image."""
import pytest
import torch
from PIL import Image

from ocellus.data.image import ImageProcessorConfig
from ocellus.data.image_tiling import preprocess_anyres
from ocellus.errors import ConfigError, InputError
from ocellus.models.connectors.perceiver import PerceiverConfig, PerceiverResampler
from ocellus.models.connectors.token_sampler import TokenSampler
from ocellus.models.vision.vit import ViTConfig, VisionTransformer

PINPOINTS = [(24, 24), (24, 48), (48, 24), (48, 48)]


def _sampler(latents: int = 3, dim: int = 16) -> TokenSampler:
    torch.manual_seed(0)
    perceiver = PerceiverResampler(PerceiverConfig(dim=dim, depth=1, num_latents=latents, heads=2, head_dim=8))
    return TokenSampler(perceiver, PINPOINTS, tile_size=24).eval()


@pytest.mark.parametrize("latents", [3, 5])
def test_images_with_different_tile_counts_get_views_times_latents_tokens(latents):
    sampler = _sampler(latents)
    sizes = [(20, 20), (20, 45), (50, 50)]                     # 1, 2 and 4 tiles (+ the global view each)
    views = [sampler.num_views(s) for s in sizes]
    assert views == [2, 3, 5]
    feats = torch.randn(sum(views), 9, 16)                      # [sum V_i, P, D]
    out = sampler(feats, torch.tensor(sizes))
    assert [o.shape for o in out] == [(v * latents, 16) for v in views]
    assert [sampler.num_tokens(s) for s in sizes] == [v * latents for v in views]


def test_tiles_are_resampled_independently():
    sampler = _sampler()
    sizes = torch.tensor([[50, 50], [20, 45]])
    feats = torch.randn(5 + 3, 9, 16)
    changed = feats.clone()
    changed[2] = torch.randn(9, 16)                             # image 0, its second tile (view 2)
    a, b = sampler(feats, sizes), sampler(changed, sizes)
    L = 3
    torch.testing.assert_close(a[0][:2 * L], b[0][:2 * L], atol=1e-6, rtol=0)      # global view, tile 1
    assert not torch.allclose(a[0][2 * L:3 * L], b[0][2 * L:3 * L], atol=1e-4)     # tile 2: changed
    torch.testing.assert_close(a[0][3 * L:], b[0][3 * L:], atol=1e-6, rtol=0)      # tiles 3, 4
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)                       # the other image
    # each view's tokens equal the perceiver on that view alone
    torch.testing.assert_close(a[1][L:2 * L], sampler.perceiver(feats[6:7])[0], atol=1e-5, rtol=1e-5)


def test_end_to_end_from_pil_images_through_a_vit():
    """preprocess_anyres -> select_views (padding views dropped) -> ViT -> token sampler."""
    cfg = ImageProcessorConfig.from_dict({"size": {"height": 24, "width": 24}, "do_center_crop": False,
                                          "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                          "image_grid_pinpoints": [list(p) for p in PINPOINTS]})
    images = [Image.new("RGB", (45, 20), "red"), Image.new("RGB", (60, 60), "blue")]   # PIL sizes are (W, H)
    pixel_values, image_sizes = preprocess_anyres(images, cfg)
    assert pixel_values.shape == (2, 5, 3, 24, 24)                  # zero-padded to the larger image's 5 views
    sampler = _sampler(latents=4, dim=32)
    views = sampler.select_views(pixel_values, image_sizes)
    assert views.shape[0] == 3 + 5
    vit = VisionTransformer(ViTConfig.clip(image_size=24, patch_size=6, hidden_size=32, intermediate_size=64,
                                           num_layers=1, num_heads=4)).eval()
    out = sampler(vit.features(views, layer=-1), image_sizes)
    assert [o.shape[0] for o in out] == [3 * 4, 5 * 4]


def test_bad_inputs():
    sampler = _sampler()
    with pytest.raises(InputError, match=r"hold the 7 views .* \(\[2, 5\] per image\)"):
        sampler(torch.randn(6, 9, 16), torch.tensor([[20, 20], [50, 50]]))
    with pytest.raises(InputError, match=r"needs 5 views \(1 global \+ 4 tiles\) but pixel_values has only 2"):
        sampler.select_views(torch.randn(1, 2, 3, 24, 24), torch.tensor([[50, 50]]))
    with pytest.raises(ConfigError, match="not multiples of the tile size"):
        TokenSampler(sampler.perceiver, [(30, 30)], tile_size=24)
