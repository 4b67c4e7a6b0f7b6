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


def test_bad_config_and_input():
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(size=8, scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="flip_p"):
        AugmentConfig(size=8, flip_p=2.0)
    with pytest.raises(InputError, match="PIL"):
        augment(np.zeros((4, 4, 3)), AugmentConfig(size=8), random.Random(0))
