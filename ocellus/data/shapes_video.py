"""Moving-shapes videos: one shape slides left, right, up or down over a few frames beside still shapes, and
the question is which way it moves ("Which way does the circle move?" -> "right").

    cfg = VideoShapesConfig(image_size=48, frames=4, seed=0)
    s = sample_at(cfg, i)      # {"messages": [user: video part + question, assistant: "right"],
                               #  "videos": [[PIL frame, ...]], "images": [], "answer", "type", "track", ...}

Only the motion answers the question. The moving shape's path is centred anywhere its whole sweep fits, the
same for every direction, so its position in any one frame (or the middle frame) says nothing about the
direction: a model must compare frames. The still shapes (0..max_distractors) have other shapes and other
colours than the moving one and keep clear of its sweep, so the named shape is unique and never occluded.
Frames are rendered by data/shapes.render (flat colours, no anti-aliasing): every pixel of the mover is its
colour, so its centre can be measured back from the pixels (tests/unit/test_shapes_video.py does).

A sample is a pure function of (cfg.seed, i), like data/shapes.sample_at, so held-out sets use another seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ocellus.data.shapes import BACKGROUNDS, COLOURS, SHAPES, Obj, Scene, render
from ocellus.errors import ConfigError, positive_int

DIRECTIONS = ("left", "right", "up", "down")
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
QUESTIONS = ("Which way does the {shape} move?", "In which direction is the {shape} moving?",
             "Where does the {shape} go: left, right, up or down?")


@dataclass(frozen=True)
class VideoShapesConfig:
    seed: int = 0
    image_size: int = 48
    frames: int = 4
    travel: float = 0.4           # the mover's whole sweep, as a fraction of the side (split over frames - 1 steps)
    side: tuple[int, int] = (10, 14)   # the shapes' side in pixels, [min, max]
    max_distractors: int = 1
    background: str = "white"
    question_variants: bool = False    # False: always QUESTIONS[0]; True: any of QUESTIONS

    def __post_init__(self):
        positive_int(self.image_size, "shapes video image_size")
        if not isinstance(self.frames, int) or isinstance(self.frames, bool) or self.frames < 2:
            raise ConfigError(f"a moving-shapes video needs frames >= 2, got {self.frames!r}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"background must be one of {sorted(BACKGROUNDS)}, got {self.background!r}")
        lo, hi = self.side
        if not 2 <= lo <= hi or hi + self.sweep > self.image_size:
            raise ConfigError(f"shapes of side {lo}..{hi} px sweeping {self.sweep} px do not fit a {self.image_size} px "
                              f"frame; lower travel or side, or raise image_size")

    @property
    def step(self) -> int:
        """Pixels the mover moves between two frames (at least 1)."""
        return max(1, round(self.travel * self.image_size / (self.frames - 1)))

    @property
    def sweep(self) -> int:
        return self.step * (self.frames - 1)


def _box(x: int, y: int, side: int) -> tuple[int, int, int, int]:
    return x, y, x + side, y + side


def _clear(a, b, gap: int = 2) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def make_track(rng: np.random.Generator, cfg: VideoShapesConfig) -> dict:
    """The mover (shape, colour, direction, one bbox per frame) and the still shapes."""
    shape, direction = SHAPES[int(rng.integers(len(SHAPES)))], DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    side = int(rng.integers(cfg.side[0], cfg.side[1] + 1))
    dx, dy = STEP[direction]
    size, sweep = cfg.image_size, cfg.sweep
    # the path's first corner, drawn so the path's CENTRE is uniform wherever the sweep fits: the same spread for
    # both directions of an axis, so no single frame's position tells the direction
    along = int(rng.integers(0, size - side - sweep + 1)) + (sweep if dx + dy < 0 else 0)
    across = int(rng.integers(0, size - side + 1))
    x0, y0 = (along, across) if dx else (across, along)
    boxes = [_box(x0 + dx * cfg.step * t, y0 + dy * cfg.step * t, side) for t in range(cfg.frames)]
    swept = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    still = []
    for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
        other = [s for s in SHAPES if s != shape and all(s != d.shape for d in still)]
        others_c = [c for c in COLOURS if c != colour]
        s_side = int(rng.integers(cfg.side[0], cfg.side[1] + 1))
        for _attempt in range(20):   # a free spot away from the sweep and the other still shapes
            box = _box(int(rng.integers(0, size - s_side + 1)), int(rng.integers(0, size - s_side + 1)), s_side)
            if _clear(box, swept) and all(_clear(box, d.bbox) for d in still):
                still.append(Obj(other[int(rng.integers(len(other)))], others_c[int(rng.integers(len(others_c)))], box))
                break
    return {"shape": shape, "colour": colour, "direction": direction, "boxes": boxes, "still": still}


def render_track(track: dict, cfg: VideoShapesConfig) -> list[Image.Image]:
    """One RGB frame per bbox of the mover, the still shapes drawn in every frame."""
    return [render(Scene(cfg.image_size, cfg.background, (*track["still"], Obj(track["shape"], track["colour"], box))))
            for box in track["boxes"]]


def sample_at(cfg: VideoShapesConfig, i: int) -> dict:
    """Sample i: a conversation (a video part + the question, the direction as the answer) and its frames."""
    rng = np.random.default_rng([cfg.seed, i])
    track = make_track(rng, cfg)
    template = QUESTIONS[int(rng.integers(len(QUESTIONS)))] if cfg.question_variants else QUESTIONS[0]
    question = template.format(shape=track["shape"])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": track["direction"]}]}]
    return {"id": f"shapes-video-{cfg.seed}-{i}", "messages": messages, "videos": [render_track(track, cfg)],
            "images": [], "answer": track["direction"], "type": track["direction"], "track": track}


def samples(cfg: VideoShapesConfig, n: int) -> list[dict]:
    return [sample_at(cfg, i) for i in range(n)]
