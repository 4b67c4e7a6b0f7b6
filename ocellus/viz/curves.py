"""Training curves as PNG with Pillow alone (no plotting library): loss per step, raw and smoothed
(plot_curve); several named series per panel, panels side by side (plot_panels)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ocellus.errors import InputError


def plot_curve(history: list[dict], path: str | Path, key: str = "loss", title: str = "",
               size: tuple[int, int] = (640, 360), smooth: float = 0.9) -> Path:
    """history: [{"step": int, key: float}, ...] -> a PNG with axes, ticks, the raw curve (light) and
    an exponential moving average (dark)."""
    W, H = size
    left, right, top, bottom = 60, 20, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [(h["step"], h[key]) for h in history if key in h]
    d.text((left, 8), f"{title} {key}".strip(), fill="black")
    if len(pts) >= 2:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        y1 = y1 if y1 > y0 else y0 + 1e-9

        def to_px(x, y):
            return (left + (x - x0) / max(x1 - x0, 1e-9) * (W - left - right),
                    top + (1 - (y - y0) / (y1 - y0)) * (H - top - bottom))

        d.rectangle([left, top, W - right, H - bottom], outline="black")
        for i in range(5):  # y ticks
            y = y0 + (y1 - y0) * i / 4
            _, py = to_px(x0, y)
            d.line([left - 4, py, left, py], fill="black")
            d.text((4, py - 6), f"{y:.3g}", fill="black")
        for i in range(5):  # x ticks
            x = x0 + (x1 - x0) * i / 4
            px, _ = to_px(x, y0)
            d.line([px, H - bottom, px, H - bottom + 4], fill="black")
            d.text((px - 10, H - bottom + 8), f"{int(x)}", fill="black")
        d.line([to_px(x, y) for x, y in pts], fill=(170, 200, 240), width=1)
        ema, smoothed = ys[0], []
        for x, y in pts:
            ema = smooth * ema + (1 - smooth) * y
            smoothed.append(to_px(x, ema))
        d.line(smoothed, fill=(20, 60, 160), width=2)
        d.text((W // 2 - 10, H - 16), "step", fill="black")
    path = Path(path)
    img.save(path)
    return path


# Distinct on white and from each other; series keep their colour across panels (by position in the list).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


@dataclass(frozen=True)
class Series:
    """One named curve: `line` points joined by a line (e.g. held-out evals during training), `dots` drawn as
    filled dots (e.g. a run's final eval); either may be empty."""
    label: str
    line: tuple[tuple[float, float], ...] = ()
    dots: tuple[tuple[float, float], ...] = ()


def plot_panels(panels: dict[str, list[Series]], path: str | Path, xlabel: str,
                y_range: tuple[float, float] = (0.0, 1.0), title: str = "",
                panel_size: tuple[int, int] = (420, 300)) -> Path:
    """Panels side by side, each several Series on a common x range (over all panels) and the fixed y_range,
    the i-th series of every panel in PALETTE[i], one legend below -> a PNG at path."""
    if not panels or any(not series for series in panels.values()):
        raise InputError("plot_panels needs at least one panel, each with at least one series")
    labels = [s.label for s in next(iter(panels.values()))]
    if any([s.label for s in series] != labels for series in panels.values()):
        raise InputError(f"every panel must list the same series in the same order ({labels})")
    if len(labels) > len(PALETTE):
        raise InputError(f"at most {len(PALETTE)} series per panel, got {len(labels)}")
    y0, y1 = y_range
    if not y1 > y0:
        raise InputError(f"y_range must rise, got {y_range}")
    xs = [x for series in panels.values() for s in series for x, _ in (*s.line, *s.dots)]
    x0, x1 = (min(0.0, *xs), max(xs)) if xs else (0.0, 1.0)
    x1 = x1 if x1 > x0 else x0 + 1.0
    pw, ph = panel_size
    left, right, top, bottom = 50, 15, 28, 40
    legend_rows = (len(labels) + 2) // 3
    img = Image.new("RGB", (pw * len(panels), ph + 20 + 18 * legend_rows), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 2), title, fill="black")
    for k, (name, series) in enumerate(panels.items()):
        ox = k * pw

        def to_px(x, y, ox=ox):
            return (ox + left + (x - x0) / (x1 - x0) * (pw - left - right),
                    20 + top + (1 - (y - y0) / (y1 - y0)) * (ph - top - bottom))

        d.text((ox + left, 20 + 8), name, fill="black")
        d.rectangle([ox + left, 20 + top, ox + pw - right, 20 + ph - bottom], outline="black")
        for i in range(5):
            y, x = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
            _, py = to_px(x0, y)
            px, _ = to_px(x, y0)
            d.line([ox + left - 4, py, ox + left, py], fill="black")
            d.text((ox + 4, py - 6), f"{y:.3g}", fill="black")
            d.line([px, 20 + ph - bottom, px, 20 + ph - bottom + 4], fill="black")
            d.text((px - 12, 20 + ph - bottom + 8), f"{x:.0f}" if x1 - x0 >= 20 else f"{x:.3g}", fill="black")
        d.text((ox + pw // 2 - 30, 20 + ph - 16), xlabel, fill="black")
        for s, colour in zip(series, PALETTE):
            if len(s.line) >= 2:
                d.line([to_px(x, y) for x, y in s.line], fill=colour, width=2)
            for x, y in s.dots:
                px, py = to_px(x, y)
                d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour, outline="black")
    for i, (label, colour) in enumerate(zip(labels, PALETTE)):
        lx, ly = 10 + (i % 3) * (img.width // 3), ph + 24 + 18 * (i // 3)
        d.rectangle([lx, ly + 2, lx + 16, ly + 12], fill=colour)
        d.text((lx + 22, ly), label, fill="black")
    path = Path(path)
    img.save(path)
    return path
