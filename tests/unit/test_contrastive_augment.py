"""The MoCo/SimCLR augmentations (ocellus/data/augment.py): seeded, each op does what it says."""
import random

import numpy as np
import pytest
from PIL import Image

from ocellus.data.augment import AugmentConfig, augment, random_resized_crop_box, shift_hue, two_views
from ocellus.errors import ConfigError, InputError

OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))


def picture(size=32):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_same_seed_same_views_other_seed_other_views():
    cfg = AugmentConfig(size=24)
    a = two_views(picture(), cfg, random.Random(7))
    b = two_views(picture(), cfg, random.Random(7))
    c = two_views(picture(), cfg, random.Random(8))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))       # the two views differ
    assert a[0].size == (24, 24) and a[0].mode == "RGB"


def test_crop_box_inside_image_with_area_in_scale():
    rng = random.Random(0)
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(40, 30, (0.2, 0.6), (3 / 4, 4 / 3), rng)
        assert 0 <= left and left + w <= 40 and 0 <= top and top + h <= 30
        assert 0.2 * 1200 * 0.8 <= w * h <= 0.6 * 1200 * 1.2             # rounding slack


def test_crop_aspect_is_log_uniform_within_the_ratio_bounds():
    """torchvision draws log(w / h) uniformly: over (1/4, 4) half the crops are wider than tall (a uniform draw of
    w / h would make ~5 in 6 wider); over (1.5, 3) every crop is wider, w / h inside the bounds."""
    rng = random.Random(0)
    boxes = [random_resized_crop_box(1000, 1000, (0.1, 0.1), (1 / 4, 4), rng) for _ in range(2000)]
    wider = sum(w > h for _, _, w, h in boxes) / len(boxes)
    assert 0.45 < wider < 0.55, wider
    for _ in range(200):
        _, _, w, h = random_resized_crop_box(1000, 1000, (0.1, 0.3), (1.5, 3), rng)
        assert 1.45 <= w / h <= 3.05, (w, h)


def test_crop_falls_back_to_a_centre_crop_at_the_ratio_bound():
    """No box of the asked area fits a 10 x 1000 strip: the centre crop, cut to the ratio's bound (torchvision)."""
    assert random_resized_crop_box(10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(0)) == (0, 493, 10, 13)
    assert random_resized_crop_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(0)) == (493, 0, 13, 10)
    assert random_resized_crop_box(10, 10, (1.0, 1.0), (2.0, 3.0), random.Random(0)) == (0, 2, 10, 5)


def test_jitter_darkens_as_well_as_brightens():
    grey = Image.new("RGB", (8, 8), (128, 128, 128))
    cfg = AugmentConfig(size=8, **{**OFF, "jitter_p": 1.0}, brightness=0.4, contrast=0, saturation=0, hue=0)
    means = [np.asarray(augment(grey, cfg, random.Random(i))).mean() for i in range(40)]
    assert min(means) < 100 and max(means) > 156          # factors from [0.6, 1.4]


def test_all_off_is_a_resize_and_flip_mirrors():
    img = picture()
    same = augment(img, AugmentConfig(size=32, **OFF), random.Random(0))
    assert np.array_equal(np.asarray(same), np.asarray(img))
    flipped = augment(img, AugmentConfig(size=32, **{**OFF, "flip_p": 1.0}), random.Random(0))
    assert np.array_equal(np.asarray(flipped), np.asarray(img)[:, ::-1])


def test_grayscale_and_blur():
    img = picture()
    grey = np.asarray(augment(img, AugmentConfig(size=32, **{**OFF, "grayscale_p": 1.0}), random.Random(0))).astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    blurred = np.asarray(augment(img, AugmentConfig(size=32, **{**OFF, "blur_p": 1.0, "blur_sigma": (2.0, 2.0)}),
                                 random.Random(0))).astype(float)
    assert blurred.std() < np.asarray(img).astype(float).std() * 0.6   # noise averaged away


def test_hue_shift_turns_red_towards_cyan():
    red = Image.new("RGB", (4, 4), (220, 30, 30))
    r, g, b = shift_hue(red, 0.5).getpixel((0, 0))
    assert r < 60 and g > 150 and b > 150
    assert shift_hue(red, 0.0).getpixel((0, 0)) == pytest.approx((220, 30, 30), abs=3)
    r, g, b = shift_hue(red, -1 / 6).getpixel((0, 0))     # the wheel wraps: red back a sixth is magenta
    assert r > 150 and b > 150 and g < 60


def test_bad_config_and_input():
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(size=8, scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="flip_p"):
        AugmentConfig(size=8, flip_p=2.0)
    with pytest.raises(InputError, match="PIL"):
        augment(np.zeros((4, 4, 3)), AugmentConfig(size=8), random.Random(0))
