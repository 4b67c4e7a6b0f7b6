"""viz/curves.plot_panels: several named series per panel, the same colour per series in every panel, dots where
asked, a common x range; bad input refused naming the problem."""
import pytest
from PIL import Image

from ocellus.errors import InputError
from ocellus.viz.curves import PALETTE, Series, plot_panels


def test_each_series_keeps_its_colour_and_dots_land_where_their_values_are(tmp_path):
    panels = {"colour": [Series("a", line=((0, 0.0), (100, 1.0))), Series("b", dots=((100, 0.5),))],
              "shape": [Series("a", line=((0, 1.0), (50, 1.0))), Series("b", dots=((200, 0.25),))]}
    img = Image.open(plot_panels(panels, tmp_path / "p.png", "step", panel_size=(400, 300))).convert("RGB")
    assert img.width == 2 * 400
    # plot area of a panel: x 50 ... 400 - 15, y 20 + 28 ... 20 + 300 - 40; x runs 0 ... 200 in both panels
    x_px = lambda panel, x: 400 * panel + 50 + x / 200 * (400 - 50 - 15)   # noqa: E731
    y_px = lambda y: round(20 + 28 + (1 - y) * (300 - 28 - 40))             # noqa: E731
    assert img.getpixel((round(x_px(0, 100)), y_px(0.5))) == PALETTE[1]      # series b's dot, panel 1
    assert img.getpixel((round(x_px(1, 200)), y_px(0.25))) == PALETTE[1]     # the same series, same colour, panel 2
    # series a's line in panel 2 runs along y = 1.0 (the top edge) from x = 0 to 50, a quarter of the range
    assert img.getpixel((round(x_px(1, 40)), y_px(1.0) + 1)) == PALETTE[0]
    assert img.getpixel((round(x_px(1, 60)), y_px(1.0) + 1)) == (255, 255, 255)


def test_bad_panels_are_refused(tmp_path):
    with pytest.raises(InputError, match="at least one panel"):
        plot_panels({}, tmp_path / "p.png", "x")
    with pytest.raises(InputError, match="same series"):
        plot_panels({"p": [Series("a")], "q": [Series("b")]}, tmp_path / "p.png", "x")
    with pytest.raises(InputError, match="y_range"):
        plot_panels({"p": [Series("a")]}, tmp_path / "p.png", "x", y_range=(1.0, 1.0))
    with pytest.raises(InputError, match="at most"):
        plot_panels({"p": [Series(str(i)) for i in range(len(PALETTE) + 1)]}, tmp_path / "p.png", "x")
