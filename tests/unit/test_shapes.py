"""The "shapes" synthetic dataset: deterministic, every answer true of the image, boxes on the
drawn pixels, LLaVA JSON round trip, and loud (or counted) bad records.

Answers are re-derived here from the ground-truth objects by parsing the question text, with
code independent of ocellus/data/shapes.py, so a wrong template or a wrong answer both fail."""
import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from ocellus.data.messages import from_llava
from ocellus.data.llava_json import read_llava_json, write_llava_json
from ocellus.data.shapes import COLOURS, ShapesConfig, make_scene, render, sample_at, samples
from ocellus.errors import ConfigError, InputError

CFG = ShapesConfig(seed=7)
SINGULAR = {"circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star", "crosses": "cross"}
RELATION = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
BOX = re.compile(r"<ref>([a-z]+ [a-z]+)</ref><box>\((\d+),(\d+)\),\((\d+),(\d+)\)</box>")


def _text(message) -> str:
    return "".join(p["text"] for p in message["content"] if p["type"] == "text")


def _named(objects, name):
    found = [o for o in objects if f"{o['colour']} {o['shape']}" == name]
    assert len(found) == 1, f"{name!r} must name exactly one object"
    return found[0]


def _side(a, b, axis):
    """'left'/'right' (axis 0) or 'above'/'below' (axis 1) when the boxes are apart on that axis, else None."""
    lo, hi = ("left", "right") if axis == 0 else ("above", "below")
    if a["bbox"][axis + 2] <= b["bbox"][axis]:
        return lo
    if b["bbox"][axis + 2] <= a["bbox"][axis]:
        return hi
    return None


def expected_answer(question: str, objects) -> tuple[str, str]:
    """(type, answer) for one QA question, computed from the objects alone."""
    assert question.endswith("\n" + CFG.answer_prompt)
    q = question.split("\n")[0]
    if m := re.fullmatch(r"What colour is the (\w+)\?", q):
        found = [o for o in objects if o["shape"] == m[1]]
        assert len(found) == 1, "ambiguous colour question"
        return "colour", found[0]["colour"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        found = [o for o in objects if o["colour"] == m[1]]
        assert len(found) == 1, "ambiguous shape question"
        return "shape", found[0]["shape"]
    if q == "How many shapes are there?":
        return "count", str(len(objects))
    if m := re.fullmatch(r"How many (\w+) are there\?", q):
        return "count", str(sum(o["shape"] == SINGULAR[m[1]] for o in objects))
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", q):
        assert m[1] in COLOURS
        return "count", str(sum(o["colour"] == m[1] for o in objects))
    if m := re.fullmatch(r"Is the (\w+ \w+) to the left or to the right of the (\w+ \w+)\?", q):
        side = _side(_named(objects, m[1]), _named(objects, m[2]), 0)
        assert side is not None, "left/right asked about boxes that overlap horizontally"
        return "spatial", side
    if m := re.fullmatch(r"Is the (\w+ \w+) above or below the (\w+ \w+)\?", q):
        side = _side(_named(objects, m[1]), _named(objects, m[2]), 1)
        assert side is not None, "above/below asked about boxes that overlap vertically"
        return "spatial", side
    if m := re.fullmatch(r"Is the (\w+ \w+) (to the left of|to the right of|above|below) the (\w+ \w+)\?", q):
        relation = RELATION[m[2]]
        side = _side(_named(objects, m[1]), _named(objects, m[3]), 0 if relation in ("left", "right") else 1)
        assert side is not None, "relation asked along an axis where the boxes overlap"
        return "spatial", "yes" if side == relation else "no"
    if m := re.fullmatch(r"Is the (\w+ \w+) in the (left or the right|top or the bottom) half of the picture\?", q):
        o, half = _named(objects, m[1]), CFG.image_size / 2
        lo, hi = (0, 2) if m[2].startswith("left") else (1, 3)
        words = ("left", "right") if m[2].startswith("left") else ("top", "bottom")
        assert o["bbox"][hi] <= half or o["bbox"][lo] >= half, "position asked about a box across the middle"
        return "position", words[0] if o["bbox"][hi] <= half else words[1]
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", q):
        assert ("an " if m[1][0] in "aeiou" else "a ") in q
        return "existence", "yes" if any(o["colour"] == m[1] and o["shape"] == m[2] for o in objects) else "no"
    raise AssertionError(f"unknown question form: {q!r}")


def test_same_seed_same_bytes_other_seed_differs():
    def dump(cfg):
        return [(s["images"][0].tobytes(), json.dumps([s["messages"], s["answer"], s["objects"]]))
                for s in samples(cfg, 25, kind="mixed")]
    first = dump(CFG)
    assert first == dump(ShapesConfig(seed=7))
    other = dump(ShapesConfig(seed=8))
    assert all(a != b for a, b in zip(first, other))
    # Random access gives the same sample as streaming, and the scene does not depend on the task kind.
    assert sample_at(CFG, 3, "mixed")["messages"] == list(samples(CFG, 1, start=3))[0]["messages"]
    assert sample_at(CFG, 3, "qa")["objects"] == sample_at(CFG, 3, "caption")["objects"]


def test_scenes_follow_the_config_and_boxes_are_tight_on_the_drawn_pixels():
    cfg = ShapesConfig(seed=1)
    counts = set()
    for s in samples(cfg, 200, kind="qa"):
        image, objects = np.asarray(s["images"][0]), s["objects"]
        assert image.shape == (64, 64, 3) and s["images"][0].mode == "RGB"
        counts.add(len(objects))
        assert len({(o["colour"], o["shape"]) for o in objects}) == len(objects)  # every object nameable
        covered = np.zeros(image.shape[:2], bool)
        for o in objects:
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and x1 - x0 == y1 - y0
            mask = (image[y0:y1, x0:x1] == COLOURS[o["colour"]]).all(-1)
            ys, xs = np.nonzero(mask)
            # the box is the tight box of the shape's pixels: it touches all four sides
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x1 - x0, y1 - y0), o
            assert mask[(y1 - y0) // 2, (x1 - x0) // 2], f"centre of a filled {o['shape']} is not its colour"
            covered[y0:y1, x0:x1] = True
        background = (image == (255, 255, 255)).all(-1)
        assert background[~covered].all(), "paint outside every box"
        # only palette colours and the background are drawn: no anti-aliased in-between shades
        palette = np.array([COLOURS[c] for c in cfg.colours] + [(255, 255, 255)])
        assert (image[:, :, None, :] == palette).all(-1).any(-1).all()
    assert counts == {1, 2, 3, 4}


def test_every_qa_answer_is_true_of_the_ground_truth():
    seen = {}
    for s in samples(ShapesConfig(seed=2), 200, kind="qa"):
        user, assistant = s["messages"]
        assert user["content"][0]["type"] == "image" and len(s["images"]) == 1
        kind, answer = expected_answer(_text(user), s["objects"])
        assert (kind, answer) == (s["type"], s["answer"]) == (kind, _text(assistant)), _text(user)
        seen.setdefault(kind, set()).add(answer)
    assert set(seen) == {"colour", "shape", "count", "spatial", "existence"}
    assert seen["existence"] == {"yes", "no"} and {"left", "right", "above", "below"} <= seen["spatial"]


def test_position_questions_name_the_half_the_box_lies_in():
    """The single-object curriculum type: asked only when the box lies wholly in one half, never in the
    default mix (the held-out tables keep their five types)."""
    cfg = ShapesConfig(seed=3, qa_weights=(("position", 1.0), ("count", 1e-9)))   # count: a box across both middles
    seen = set()
    for s in samples(cfg, 150, kind="qa"):
        if s["type"] == "count":
            continue
        user, assistant = s["messages"]
        assert expected_answer(_text(user), s["objects"]) == ("position", s["answer"]) == ("position", _text(assistant))
        seen.add(s["answer"])
    assert seen == {"left", "right", "top", "bottom"}
    assert "position" not in {s["type"] for s in samples(ShapesConfig(seed=3), 300, kind="qa")}


def test_conversations_have_2_to_3_correct_turns():
    lengths = set()
    for s in samples(ShapesConfig(seed=3), 60, kind="conversation"):
        messages = s["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert messages[0]["content"][0]["type"] == "image"
        assert all(p["type"] == "text" for m in messages[1:] for p in m["content"])  # one image, first turn only
        turns = [(messages[k], messages[k + 1]) for k in range(0, len(messages), 2)]
        lengths.add(len(turns))
        assert s["answer"] == [_text(a) for _, a in turns]
        for (user, assistant), kind in zip(turns, s["turn_types"]):
            assert expected_answer(_text(user), s["objects"]) == (kind, _text(assistant))
    assert lengths == {2, 3}


def test_conversation_turns_and_hard_negative_share_follow_the_config():
    cfg = ShapesConfig(seed=3, conversation_turns=(4, 5), qa_weights=(("existence", 1.0), ("count", 1.0)))
    lengths = {len(s["messages"]) // 2 for s in samples(cfg, 40, kind="conversation")}
    assert lengths == {4, 5}

    def hard_share(share: float) -> float:
        cfg = ShapesConfig(seed=5, hard_negatives=share, qa_weights=(("existence", 1.0),))
        hard = total = 0
        for s in samples(cfg, 600, kind="qa"):
            if s["answer"] == "no":
                colour, shape = re.match(r"Is there an? ([a-z]+) ([a-z]+)\?", _text(s["messages"][0])).groups()
                total += 1
                hard += any(o["colour"] == colour or o["shape"] == shape for o in s["objects"])
        return hard / total
    assert hard_share(1.0) == 1.0            # the default (and the eval): every negative tests binding
    assert hard_share(0.0) == 0.0            # every negative shares neither colour nor shape
    assert 0.35 < hard_share(0.5) < 0.65


def test_captions_and_descriptions_name_every_object_once():
    positions = {}
    for s in samples(ShapesConfig(seed=4), 80, kind="caption"):
        text, objects = _text(s["messages"][1]), s["objects"]
        names = [f"{o['colour']} {o['shape']}" for o in objects]
        for name in names:
            assert len(re.findall(rf"\b[Aa]n? {name}\b", text)) == 1, (name, text)
        if s["type"] == "detail":
            n = len(objects)
            assert text.startswith(f"There {'is' if n == 1 else 'are'} {['one', 'two', 'three', 'four'][n - 1]} shape")
            for o in objects:  # "A red circle is at the top left." from the centre's third of the image
                cx, cy = (o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2
                row = ("top", "middle", "bottom")[int(cy * 3 // 64)]
                col = ("left", "centre", "right")[int(cx * 3 // 64)]
                said = re.search(rf"An? {o['colour']} {o['shape']} is (at|on|in) the ([a-z ]+)\.", text)[2]
                expected = {("middle", "centre"): "centre"}.get((row, col)) or \
                    (row if col == "centre" else col if row == "middle" else f"{row} {col}")
                assert said == expected, (o, text)
                positions[said] = True
        else:
            xs = [(o["bbox"][0] + o["bbox"][2]) / 2 for o in objects]
            order = [names[i] for i in sorted(range(len(names)), key=lambda i: xs[i])]
            assert re.findall(r"[a-z]+ [a-z]+(?= and|,|\.)", text) == order  # left to right
    assert len(positions) >= 6


def test_grounding_boxes_are_qwen_vl_format_and_land_on_the_object():
    kinds = set()
    for s in samples(ShapesConfig(seed=5, image_size=96), 100, kind="grounding"):
        image, objects = np.asarray(s["images"][0]), s["objects"]
        answer = _text(s["messages"][1])
        boxes = BOX.findall(answer)
        assert boxes and "".join(f"<ref>{r}</ref><box>({a},{b}),({c},{d})</box>" for r, a, b, c, d in boxes) \
            == answer.replace("\n", "")
        kinds.add(s["type"])
        if s["type"] == "grounding":
            assert len(boxes) == 1 and boxes[0][0] in _text(s["messages"][0])
        else:
            assert sorted(r for r, *_ in boxes) == sorted(f"{o['colour']} {o['shape']}" for o in objects)
        for ref, *coords in boxes:
            x1, y1, x2, y2 = map(int, coords)
            assert 0 <= x1 < x2 < 1000 and 0 <= y1 < y2 < 1000
            o = _named(objects, ref)
            # the box is the pixel box scaled to 1000 (within one pixel) ...
            for got, pixel in zip((x1, y1, x2, y2), o["bbox"]):
                assert abs(got * 96 / 1000 - pixel) <= 1.0, (ref, (x1, y1, x2, y2), o["bbox"])
            # ... and its centre, mapped back to pixels, is painted in the object's colour
            cx, cy = int((x1 + x2) / 2 * 96 / 1000), int((y1 + y2) / 2 * 96 / 1000)
            assert tuple(image[cy, cx]) == COLOURS[o["colour"]], (ref, o)
    assert kinds == {"grounding", "grounding_all"}


def test_llava_json_round_trip(tmp_path):
    cfg = ShapesConfig(seed=6)
    data_json = write_llava_json(tmp_path / "a", cfg, 30)
    records = json.loads(data_json.read_text())
    meta = [json.loads(line) for line in (tmp_path / "a" / "meta.jsonl").read_text().splitlines()]
    originals = list(samples(cfg, 30))
    assert len(records) == len(meta) == 30
    for record, truth, original in zip(records, meta, originals):
        assert record["id"] == truth["id"] == original["id"]
        first = record["conversations"][0]
        assert first["from"] == "human" and first["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in record["conversations"]) == 1
        conversation = from_llava(record)
        assert conversation.images == [truth["image"]]
        # the same conversation, up to the newline LLaVA puts after "<image>"
        assert [(m["role"], [p.get("text", "").lstrip("\n") for p in m["content"]]) for m in conversation.messages] \
            == [(m["role"], [p.get("text", "") for p in m["content"]]) for m in original["messages"]]
        assert truth["objects"] == original["objects"] and truth["answer"] == original["answer"]
        with Image.open(tmp_path / "a" / truth["image"]) as png:
            assert png.convert("RGB").tobytes() == original["images"][0].tobytes()
    loaded = read_llava_json(data_json)
    assert len(loaded.samples) == 30 and loaded.skipped == []
    assert loaded.samples[0]["images"][0] == tmp_path / "a" / records[0]["image"]
    # written files are byte-identical for the same seed
    write_llava_json(tmp_path / "b", cfg, 30)
    for name in ("data.json", "meta.jsonl", f"images/{records[5]['id']}.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_records_raise_with_file_and_index_or_are_counted(tmp_path, caplog):
    data_json = write_llava_json(tmp_path, ShapesConfig(seed=9), 4, kind="qa")
    records = json.loads(data_json.read_text())
    records[1]["image"] = "images/missing.png"                      # image file absent
    records[2]["conversations"][0]["value"] += " <image>"           # 2 placeholders, 1 image
    records.append("not a record")                                   # not a dict
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(InputError, match=r"bad\.json, record 1: .*missing\.png"):
        read_llava_json(bad)
    with caplog.at_level(logging.WARNING):
        loaded = read_llava_json(bad, skip_bad_samples=True)
    assert [s["id"] for s in loaded.samples] == [records[0]["id"], records[3]["id"]]
    assert len(loaded.skipped) == 3 and loaded.skipped[1].startswith("record 2:")
    assert "placeholders" in loaded.skipped[1] and loaded.skipped[2].startswith("record 4:")
    assert "skipped 3 of 5 records" in caplog.text

    broken = tmp_path / "broken.json"
    broken.write_text(data_json.read_text()[:-20])
    with pytest.raises(InputError, match=r"broken\.json: invalid JSON at line \d+"):
        read_llava_json(broken, skip_bad_samples=True)  # a whole-file parse error cannot be skipped

    lines = tmp_path / "data.jsonl"
    lines.write_text("\n".join([json.dumps(records[0]), "{oops", json.dumps(records[3])]) + "\n")
    with pytest.raises(InputError, match=r"data\.jsonl, line 2: invalid JSON"):
        read_llava_json(lines)
    loaded = read_llava_json(lines, skip_bad_samples=True)
    assert len(loaded.samples) == 2 and len(loaded.skipped) == 1


def test_config_errors_are_typed():
    with pytest.raises(ConfigError, match="unknown shape"):
        ShapesConfig(shapes=("hexagon",))
    with pytest.raises(ConfigError, match="max_objects"):
        ShapesConfig(shapes=("circle",), colours=("red", "blue"), max_objects=3)
    with pytest.raises(ConfigError, match="kind"):
        next(samples(CFG, 1, kind="poem"))
    with pytest.raises(ConfigError, match="cannot place"):
        next(samples(ShapesConfig(min_objects=4, max_objects=4, min_size=0.5, max_size=0.6), 1))
    with pytest.raises(ConfigError, match="hard_negatives"):
        ShapesConfig(hard_negatives=1.5)
    with pytest.raises(ConfigError, match="conversation_turns"):
        ShapesConfig(conversation_turns=(3, 2))
    scene = make_scene(np.random.default_rng(0), CFG)
    assert render(scene).size == (64, 64) and 1 <= len(scene.objects) <= 4
