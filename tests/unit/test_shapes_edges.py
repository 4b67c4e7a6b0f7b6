"""Edges of the shapes data the main tests do not reach: Qwen-VL box corners are FLOORED (integer arithmetic
written out here with fractions), boxes map back by width for x and height for y on a non-square image, every
scene keeps its documented 1-pixel margin on all four borders, and US spelling keeps a leading capital."""
import math
from fractions import Fraction

from ocellus.data.shapes import ShapesConfig, from_qwen_box, make_scene, to_qwen_box
from ocellus.data.shapes_phrasing import to_us

import numpy as np


def test_qwen_box_corners_are_floored_and_kept_under_1000():
    for width, height in [(3, 7), (64, 64), (48, 30), (999, 1001)]:
        for v in range(0, width + 1):
            x = to_qwen_box((v, 0, v, 0), width, height)[0]
            assert x == min(999, math.floor(Fraction(v * 1000, width))), (v, width)
        for v in range(0, height + 1):
            y = to_qwen_box((0, v, 0, v), width, height)[1]
            assert y == min(999, math.floor(Fraction(v * 1000, height))), (v, height)
    assert to_qwen_box((2, 2, 3, 3), 3, 3) == (666, 666, 999, 999)   # 666.67 floors; the right edge stays 999


def test_boxes_map_back_by_width_for_x_and_height_for_y():
    assert from_qwen_box((500, 250, 1000, 750), width=200, height=40) == (100.0, 10.0, 200.0, 30.0)


def test_every_scene_keeps_a_one_pixel_margin_on_each_border():
    cfg = ShapesConfig(image_size=16, min_size=0.38, max_size=0.5, min_objects=1, max_objects=2, seed=11)
    lo_x = lo_y = 16
    hi_x = hi_y = 0
    for i in range(300):
        for o in make_scene(np.random.default_rng([cfg.seed, i]), cfg).objects:
            x0, y0, x1, y1 = o.bbox
            lo_x, lo_y, hi_x, hi_y = min(lo_x, x0), min(lo_y, y0), max(hi_x, x1), max(hi_y, y1)
    # x1 / y1 are exclusive: the last drawn column / row is 14, column / row 15 is background
    assert (lo_x, lo_y, hi_x, hi_y) == (1, 1, 15, 15)


def test_us_spelling_keeps_a_leading_capital():
    assert to_us("Colour, colour, Grey and grey in the Centre.") == "Color, color, Gray and gray in the Center."
