"""Training curves as PNG with Pillow alone (no plotting library): loss per step, raw and smoothed."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


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
