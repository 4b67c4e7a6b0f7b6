"""The moving-shapes video generator: the frames move the way the answer says (measured from the pixels),
the still shapes stay still, the path's place gives no hint of its direction, samples are a function of
(seed, i), and a config that cannot fit is a ConfigError."""
import numpy as np
import pytest

from ocellus.data.shapes import COLOURS
from ocellus.data.shapes_video import DIRECTIONS, VideoShapesConfig, sample_at
from ocellus.errors import ConfigError


def _centre(frame, colour) -> np.ndarray:
    """(x, y) centre of the pixels of exactly this colour."""
    a = np.asarray(frame)
    ys, xs = np.nonzero((a == np.array(COLOURS[colour], dtype=a.dtype)).all(-1))
    assert len(xs), f"no {colour} pixel in the frame"
    return np.array([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2])


@pytest.mark.parametrize("cfg", [VideoShapesConfig(), VideoShapesConfig(image_size=64, frames=6, seed=3)])
def test_frames_move_the_way_the_answer_says(cfg):
    want = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    seen = set()
    for i in range(60):
        s = sample_at(cfg, i)
        frames, track = s["videos"][0], s["track"]
        assert len(frames) == cfg.frames and frames[0].size == (cfg.image_size, cfg.image_size)
        assert s["answer"] == track["direction"] and s["messages"][1]["content"][0]["text"] == s["answer"]
        assert track["shape"] in s["messages"][0]["content"][1]["text"]
        centres = np.stack([_centre(f, track["colour"]) for f in frames])       # [F, 2]
        steps = np.diff(centres, axis=0)                                          # [F - 1, 2]
        assert np.allclose(steps, np.array(want[s["answer"]]) * cfg.step), (i, s["answer"], steps)
        # everything that is not the mover is the same in every frame: the still shapes do not move
        mover = [(np.asarray(f) == COLOURS[track["colour"]]).all(-1) for f in frames]
        swept = np.logical_or.reduce(mover)
        first = np.asarray(frames[0])[~swept]
        assert all(np.array_equal(np.asarray(f)[~swept], first) for f in frames[1:])
        seen.add(s["answer"])
    assert seen == set(DIRECTIONS)


def test_the_path_position_does_not_tell_the_direction():
    """Along its axis the path's centre spreads the same way for both directions: mean middle-frame x of
    leftward and rightward movers agree within a few pixels (while their first frames differ by the sweep)."""
    cfg = VideoShapesConfig(seed=1)
    mids, firsts = {"left": [], "right": []}, {"left": [], "right": []}
    for i in range(800):
        track = sample_at(cfg, i)["track"]
        if track["direction"] in mids:
            boxes = track["boxes"]
            mids[track["direction"]].append((boxes[0][0] + boxes[-1][0]) / 2)
            firsts[track["direction"]].append(boxes[0][0])
    assert abs(np.mean(mids["left"]) - np.mean(mids["right"])) < 2.0
    assert np.mean(firsts["left"]) - np.mean(firsts["right"]) > cfg.sweep / 2


def test_samples_are_a_function_of_seed_and_index_and_bad_configs_fail():
    a, b = sample_at(VideoShapesConfig(seed=4), 7), sample_at(VideoShapesConfig(seed=4), 7)
    assert a["answer"] == b["answer"] and all(np.array_equal(np.asarray(x), np.asarray(y))
                                              for x, y in zip(a["videos"][0], b["videos"][0]))
    assert any(sample_at(VideoShapesConfig(seed=5), i)["track"] != sample_at(VideoShapesConfig(seed=4), i)["track"]
               for i in range(3))
    with pytest.raises(ConfigError, match="frames >= 2"):
        VideoShapesConfig(frames=1)
    with pytest.raises(ConfigError, match="do not fit"):
        VideoShapesConfig(image_size=16)
