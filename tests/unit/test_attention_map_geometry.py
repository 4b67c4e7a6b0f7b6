"""The attention map's geometry, computed by hand: the region of the original image the model saw after
LLaVA-1.5's pad-to-square (the image pasted at ((s - w) // 2, (s - h) // 2)), a resize and a centre crop
(top = (H - h) // 2, left = (W - w) // 2: data/image.center_crop); the heat scaled min-to-max; pixels outside
that region dimmed, not coloured."""
import numpy as np
from PIL import Image

from ocellus.data.image import ImageProcessorConfig
from ocellus.viz.attention_map import heat_image, overlay, view_box


def test_view_box_of_pad_resize_and_a_non_square_crop():
    # a 200 x 100 (W x H) image: padded onto a 200 x 200 canvas at (0, 50); resized to 100 x 100 (2 canvas px per
    # px); cropped to 60 high x 80 wide at top (100 - 60) // 2 = 20, left (100 - 80) // 2 = 10
    cfg = ImageProcessorConfig(size_hw=(100, 100), do_center_crop=True, crop_size=(60, 80))
    assert view_box((200, 100), cfg, pad_to_square=True) == (10 * 2 - 0, 20 * 2 - 50, 90 * 2 - 0, 80 * 2 - 50)
    # the same for a tall image: padded at (50, 0)
    assert view_box((100, 200), cfg, pad_to_square=True) == (10 * 2 - 50, 20 * 2 - 0, 90 * 2 - 50, 80 * 2 - 0)
    # no padding: a 300 x 150 image squashed to 100 x 100 is 3 px per px across and 1.5 down
    assert view_box((300, 150), cfg) == (10 * 3, 20 * 1.5, 90 * 3, 80 * 1.5)


def test_heat_is_the_grid_scaled_min_to_max():
    grid = np.array([[1.0, 2.0], [3.0, 5.0]])
    heat, seen = heat_image(grid, (2, 2))
    np.testing.assert_allclose(heat, (grid - 1) / 4, atol=1e-6)
    assert seen.all()
    flat, _ = heat_image(np.full((2, 2), 0.3), (2, 2))
    assert (flat == 0).all()


def test_overlay_dims_the_pixels_the_model_did_not_see():
    img = Image.new("RGB", (4, 4), (200, 100, 50))
    out = np.asarray(overlay(img, np.array([[0.0, 1.0]]), box=(0, 0, 2, 4), alpha=0.5)).astype(int)
    assert (out[:, 2:] == np.round(np.array([200, 100, 50]) * 0.4).astype(int)).all()   # right half: unseen
    assert not (out[:, :2] == out[:, 2:]).all()
