""""shapes": a synthetic visual-instruction dataset the project makes itself (no downloads).

Each scene is a small RGB image (64x64 by default) with 1-4 filled shapes (circle, square,
triangle, star, cross) in distinct palette colours on a plain light background, plus its
ground truth: a list of objects with shape, colour and pixel bounding box. Everything a sample
says is computed from that list, so a model's answers can be scored exactly, and a CPU can
train a tiny VLM on it in minutes.

The instruction data follows LLaVA (Liu et al. 2023, "Visual Instruction Tuning", sec. 3),
which builds three response types from ground-truth annotations of an image:
  - conversation: multi-turn question/answer about the image   -> kind="conversation"
  - detailed description: a longer, positional account         -> kind="caption" (type "detail")
  - complex reasoning: here, relations between named objects   -> QA type "spatial"
plus the short captions of its alignment stage (type "caption") and, like LLaVA-1.5, short
single-word VQA answers behind the prompt "Answer the question using a single word or
phrase." (kind="qa", one turn, with `type` colour | shape | count | spatial | existence), so
accuracy is a string comparison.

Grounding uses Qwen-VL's text format (Bai et al. 2023, "Qwen-VL", sec. 3.2): a referred
object is written `<ref>red circle</ref><box>(x1,y1),(x2,y2)</box>`, the box's top-left and
bottom-right corners normalised to integers in [0, 1000) (kind="grounding").

Questions are answerable from the image alone: every object has a distinct (colour, shape)
pair, so "the red circle" always names exactly one object; "What colour is the circle?" is
asked only when exactly one circle exists, "What shape is the red object?" only when exactly
one object is red; spatial relations are asked only along an axis where the two boxes do not
overlap.

Determinism: sample i of a config is drawn from numpy.random.default_rng([seed, i]), so the
same seed gives byte-identical images and text, any sample can be made on its own (random
access, parallel workers), and the scene of sample i does not depend on the kind of task asked
about it. How a question is worded (ShapesConfig.phrasing: paraphrases, US spelling, the suffix or
none) is drawn from a stream of its own (ocellus/data/shapes_phrasing.py), never from that rng.

Files in the LLaVA format: ocellus/data/llava_json.py (write_llava_json, read_llava_json).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from ocellus.data.messages import image_part, text_part
from ocellus.data.shapes_phrasing import PHRASINGS, phrasing_rng, word_question
from ocellus.errors import ConfigError, InputError


SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
# Saturated colours far apart in RGB and far from the light backgrounds, so each is one name at a glance.
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 90, 230), "yellow": (240, 200, 20),
    "purple": (140, 60, 190), "orange": (245, 135, 20), "pink": (240, 110, 180), "cyan": (30, 190, 210),
}
BACKGROUNDS = {"white": (255, 255, 255), "light grey": (225, 225, 225), "cream": (250, 243, 224)}
QA_TYPES = ("colour", "shape", "count", "spatial", "existence", "position")
# "position" (one object: which half of the image is it in?) is a curriculum step towards "spatial" (two
# objects compared): one lookup instead of two. Not in the default mix, so the held-out tables keep their types.
DEFAULT_QA_TYPES = QA_TYPES[:5]
KINDS = ("qa", "caption", "conversation", "grounding")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# LLaVA-style instruction variety for the description tasks (one is drawn per sample).
BRIEF_PROMPTS = ("Describe the image briefly.", "Give a short caption of the image.",
                 "What is in the image? Answer briefly.")
DETAIL_PROMPTS = ("Describe the image in detail.", "Give a detailed description of the image.",
                  "Describe every shape in the image and where it is.")
GROUNDING_PROMPTS = ("Give the bounding box of the {name}.", "Where is the {name}? Answer with a box.")
LOCATE_ALL_PROMPT = "Give the bounding box of every shape in the image."


@dataclass(frozen=True)
class ShapesConfig:
    """What scenes look like and which tasks are asked about them.

    Sizes are fractions of the image side (a shape's box is square). kind_weights picks the task
    of each sample for kind="mixed"; qa_weights picks the QA type (of single QA samples and of
    each conversation turn). answer_prompt is appended to every QA question (LLaVA-1.5's way of
    asking for a short answer); None leaves questions bare. conversation_turns bounds the QA turns
    of a conversation. hard_negatives is the share of "no" existence questions that name an
    absent pair sharing a colour or a shape with a present object (the rest, where the scene allows,
    name a pair sharing neither): 1.0 tests binding; lower values give training a partial-credit
    path (colour or shape alone) towards it. phrasing words each QA question (shapes_phrasing.py):
    "canonical" as made, "us" in US spelling, "varied" a paraphrase, spelling and suffix drawn from a
    stream of the sample's own, so scenes and answers equal the canonical ones. qa_turns bounds the QA
    turns of a kind="qa" sample (several: a conversation about one image, scored on its last turn).
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    min_size: float = 0.18
    max_size: float = 0.36
    background: str = "white"
    kind_weights: tuple[tuple[str, float], ...] = (("qa", 4.0), ("caption", 2.0), ("conversation", 2.0),
                                                   ("grounding", 2.0))
    qa_weights: tuple[tuple[str, float], ...] = tuple((t, 1.0) for t in DEFAULT_QA_TYPES)
    answer_prompt: str | None = "Answer the question using a single word or phrase."
    conversation_turns: tuple[int, int] = (2, 3)
    hard_negatives: float = 1.0
    phrasing: str = "canonical"
    qa_turns: tuple[int, int] = (1, 1)
    seed: int = 0

    def __post_init__(self):
        def bad(message):
            raise ConfigError(f"ShapesConfig: {message}")
        if not 16 <= self.image_size <= 1000:
            bad(f"image_size must be in [16, 1000] (boxes are scaled to [0, 1000)), got {self.image_size}")
        for s in self.shapes:
            if s not in SHAPES:
                bad(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
        for c in self.colours:
            if c not in COLOURS:
                bad(f"unknown colour {c!r}; known: {', '.join(COLOURS)}")
        if len(set(self.shapes)) != len(self.shapes) or len(set(self.colours)) != len(self.colours) \
                or not self.shapes or not self.colours:
            bad("shapes and colours must be non-empty and without repeats")
        if self.background not in BACKGROUNDS:
            bad(f"unknown background {self.background!r}; known: {', '.join(BACKGROUNDS)}")
        if not 0.0 <= self.hard_negatives <= 1.0:
            bad(f"hard_negatives must be a share in [0, 1], got {self.hard_negatives}")
        for name, (lo_turns, hi_turns) in (("conversation_turns", self.conversation_turns),
                                           ("qa_turns", self.qa_turns)):
            if not 1 <= lo_turns <= hi_turns:
                bad(f"{name} must be (min, max) with 1 <= min <= max, got {(lo_turns, hi_turns)}")
        if self.phrasing not in PHRASINGS:
            bad(f"unknown phrasing {self.phrasing!r}; known: {', '.join(PHRASINGS)}")
        if not 1 <= self.min_objects <= self.max_objects:
            bad(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if self.max_objects > len(self.shapes) * len(self.colours):
            bad(f"max_objects {self.max_objects} exceeds the {len(self.shapes) * len(self.colours)} distinct "
                "(colour, shape) pairs; every object needs its own pair so it can be named unambiguously")
        if not 0 < self.min_size <= self.max_size < 1 or self.min_size * self.image_size < 6:
            bad(f"need 0 < min_size <= max_size < 1 and shapes at least 6 px wide, got min_size {self.min_size}, "
                f"max_size {self.max_size} at image_size {self.image_size}")
        for name, weights, allowed in (("kind_weights", self.kind_weights, KINDS),
                                       ("qa_weights", self.qa_weights, QA_TYPES)):
            if not weights or any(k not in allowed or w < 0 for k, w in weights) or sum(w for _, w in weights) <= 0:
                bad(f"{name} must be (name, weight >= 0) pairs with names from {allowed} and a positive sum, "
                    f"got {weights}")


class Obj(NamedTuple):
    """One drawn shape. bbox = (x0, y0, x1, y1) in pixels, x1/y1 exclusive: the shape's pixels are
    exactly columns x0..x1-1 and rows y0..y1-1 at their extremes (the drawing touches all four sides)."""

    shape: str
    colour: str
    bbox: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2

    def as_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "bbox": list(self.bbox)}


@dataclass(frozen=True)
class Scene:
    image_size: int
    background: str
    objects: tuple[Obj, ...]


# ---- scenes -------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, items):
    """One element, drawn through an integer index so the result is a plain Python value."""
    return items[int(rng.integers(len(items)))]


def _weighted(rng: np.random.Generator, pairs) -> str:
    names = [n for n, _ in pairs]
    weights = np.array([w for _, w in pairs], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _overlaps(a, b, gap: int) -> bool:
    # Boxes (exclusive ends) closer than `gap` pixels on both axes would touch or overlap.
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def make_scene(rng: np.random.Generator, cfg: ShapesConfig) -> Scene:
    """Draw a scene: a number of objects, each a distinct (colour, shape) pair, placed without overlap.

    Placement is rejection sampling; a scene where an object finds no free spot is redrawn whole, so
    the object count distribution does not skew towards small counts when shapes are large."""
    size = cfg.image_size
    lo, hi = max(6, round(cfg.min_size * size)), min(size - 3, max(6, round(cfg.max_size * size)))
    gap = max(2, size // 32)  # a visible background gap keeps shapes separate and boxes unambiguous
    pairs = [(c, s) for c in cfg.colours for s in cfg.shapes]
    for _ in range(100):
        count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        chosen = rng.choice(len(pairs), size=count, replace=False)
        objects = []
        for k in chosen:
            colour, shape = pairs[int(k)]
            for _ in range(100):
                side = int(rng.integers(lo, hi + 1))
                x0, y0 = (int(v) for v in rng.integers(1, size - side, size=2))  # 1 px margin from the border
                box = (x0, y0, x0 + side, y0 + side)
                if not any(_overlaps(box, o.bbox, gap) for o in objects):
                    objects.append(Obj(shape, colour, box))
                    break
            else:
                break  # no room for this object: redraw the scene
        if len(objects) == count:
            return Scene(size, cfg.background, tuple(objects))
    raise ConfigError(f"cannot place {cfg.min_objects}-{cfg.max_objects} shapes of {lo}-{hi} px in a {size}x{size} "
                      "image without overlap; lower max_objects or max_size")


def _star_points(x0, y0, x1, y1) -> list[tuple[float, float]]:
    # A five-pointed star (inner radius 0.4 of the outer), stretched so its tips touch all four sides
    # of the box: the ground-truth box is then the star's tight box.
    angles = np.deg2rad(-90 + 36 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.4)
    xs, ys = radii * np.cos(angles), radii * np.sin(angles)
    xs, ys = (xs - xs.min()) / (xs.max() - xs.min()), (ys - ys.min()) / (ys.max() - ys.min())
    return [(x0 + float(u) * (x1 - x0), y0 + float(v) * (y1 - y0)) for u, v in zip(xs, ys)]


def _draw(draw: ImageDraw.ImageDraw, obj: Obj):
    x0, y0, x1, y1 = obj.bbox
    r, b = x1 - 1, y1 - 1  # PIL's coordinates are inclusive: the last column/row drawn
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([x0, y0, r, b], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([x0, y0, r, b], fill=fill)
    elif obj.shape == "triangle":  # isosceles, pointing up
        draw.polygon([(x0, b), (r, b), ((x0 + r) / 2, y0)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star_points(x0, y0, r, b), fill=fill)
    elif obj.shape == "cross":  # a plus sign with arms a third of the side thick
        side = x1 - x0
        t = max(2, round(side / 3))
        o = (side - t) // 2
        draw.rectangle([x0, y0 + o, r, y0 + o + t - 1], fill=fill)
        draw.rectangle([x0 + o, y0, x0 + o + t - 1, b], fill=fill)
    else:
        raise ConfigError(f"unknown shape {obj.shape!r}")


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image: flat colours, no anti-aliasing, so every pixel is exactly the
    background or one palette colour."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj)
    return image


# ---- Qwen-VL boxes ------------------------------------------------------------------------------

def to_qwen_box(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), ends exclusive -> Qwen-VL's integer corners in [0, 1000).

    The corners are points on the image (0 = left/top edge, width = right edge), scaled by
    1000/width and floored; the right/bottom edge maps to 999 so values stay below 1000."""
    x0, y0, x1, y1 = bbox
    sx = lambda v: min(999, v * 1000 // width)  # noqa: E731 - integer arithmetic: no float rounding drift
    sy = lambda v: min(999, v * 1000 // height)  # noqa: E731
    return sx(x0), sy(y0), sx(x1), sy(y1)


def from_qwen_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    """Qwen-VL corners in [0, 1000) -> pixel coordinates (floats) on a width x height image."""
    x1, y1, x2, y2 = box
    return x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000


def format_box(ref: str, box) -> str:
    x1, y1, x2, y2 = box
    return f"<ref>{ref}</ref><box>({x1},{y1}),({x2},{y2})</box>"


_BOX_RE = re.compile(r"<ref>(.*?)</ref><box>\((\d+),(\d+)\),\((\d+),(\d+)\)</box>")


def parse_boxes(text: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Every `<ref>..</ref><box>(x1,y1),(x2,y2)</box>` in a text (e.g. a model's reply), in order."""
    return [(m.group(1), tuple(int(v) for v in m.group(2, 3, 4, 5))) for m in _BOX_RE.finditer(text)]


# ---- text ---------------------------------------------------------------------------------------

def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else PLURALS[shape]


def _relations(a: Obj, b: Obj) -> list[str]:
    """The relations of a to b that hold with no overlap of the boxes along that axis
    ("left": a's box ends before b's starts). Each listed relation is unambiguous from the image."""
    out = []
    if a.bbox[2] <= b.bbox[0]:
        out.append("left")
    if b.bbox[2] <= a.bbox[0]:
        out.append("right")
    if a.bbox[3] <= b.bbox[1]:
        out.append("above")
    if b.bbox[3] <= a.bbox[1]:
        out.append("below")
    return out


_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def _position(obj: Obj, size: int) -> str:
    """Where the object's centre is, on a 3x3 grid of the image."""
    cx, cy = obj.center
    col, row = min(2, int(3 * cx / size)), min(2, int(3 * cy / size))
    return (("at the top left", "at the top", "at the top right"),
            ("on the left", "in the centre", "on the right"),
            ("at the bottom left", "at the bottom", "at the bottom right"))[row][col]


def _left_to_right(scene: Scene) -> list[Obj]:
    return sorted(scene.objects, key=lambda o: (o.center[0], o.center[1]))


def caption(scene: Scene) -> str:
    """Short caption: the objects from left to right, e.g. "A red circle and a blue square."."""
    names = [_a(o.name) for o in _left_to_right(scene)]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text[0].upper() + text[1:] + "."


def describe(scene: Scene) -> str:
    """Detailed description: how many shapes, each one's place, and one relation."""
    objects, n = _left_to_right(scene), len(scene.objects)
    count = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    verb = "is" if n == 1 else "are"
    sentences = [f"There {verb} {count} {'shape' if n == 1 else 'shapes'} on a {scene.background} background."]
    sentences += [f"{_a(o.name).capitalize()} is {_position(o, scene.image_size)}." for o in objects]
    if n >= 2:  # relate the first two from the left: left-to-right order makes "left" the first relation
        a, b = objects[0], objects[1]
        relation = _relations(a, b)
        if relation:
            sentences.append(f"The {a.name} is {_RELATION_WORDS[relation[0]]} the {b.name}.")
    return " ".join(sentences)


def _qa_attribute(rng, scene, asked: str):
    """"What colour is the <shape>?" / "What shape is the <colour> object?" (asked: "colour" / "shape") of an
    object that the other attribute names uniquely; None when no object is unique that way."""
    named_by = "shape" if asked == "colour" else "colour"
    unique = [o for o in scene.objects
              if sum(getattr(p, named_by) == getattr(o, named_by) for p in scene.objects) == 1]
    if not unique:
        return None
    obj = _pick(rng, unique)
    question = f"What colour is the {obj.shape}?" if asked == "colour" else f"What shape is the {obj.colour} object?"
    return question, getattr(obj, asked)


def _qa_count(rng, scene, cfg):
    form = int(rng.integers(3))
    if form == 0:
        return "How many shapes are there?", str(len(scene.objects))
    # Mostly ask about something present (counts of 1-3), sometimes about something absent (0).
    present = rng.random() < 0.75
    if form == 1:
        shape = _pick(rng, [o.shape for o in scene.objects] if present else list(cfg.shapes))
        return f"How many {PLURALS[shape]} are there?", str(sum(o.shape == shape for o in scene.objects))
    colour = _pick(rng, [o.colour for o in scene.objects] if present else list(cfg.colours))
    return f"How many {colour} shapes are there?", str(sum(o.colour == colour for o in scene.objects))


def _qa_spatial(rng, scene):
    pairs = [(a, b) for a in scene.objects for b in scene.objects if a is not b]
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    relation = _pick(rng, _relations(a, b))  # never empty: the boxes are apart along some axis
    horizontal = relation in ("left", "right")
    if rng.random() < 0.5:  # "which side" form, one-word answer left/right/above/below
        if horizontal:
            return f"Is the {a.name} to the left or to the right of the {b.name}?", relation
        return f"Is the {a.name} above or below the {b.name}?", relation
    asked = relation if rng.random() < 0.5 else _OPPOSITE[relation]  # yes/no form, balanced
    return f"Is the {a.name} {_RELATION_WORDS[asked]} the {b.name}?", "yes" if asked == relation else "no"


def _qa_position(rng, scene):
    """Which half of the image one object is in, asked only along an axis where its box lies wholly in one
    half (so the answer is unambiguous from the image): left/right or top/bottom."""
    half = scene.image_size / 2
    options = []
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox
        if x1 <= half or x0 >= half:
            options.append((o, f"Is the {o.name} in the left or the right half of the picture?",
                            "left" if x1 <= half else "right"))
        if y1 <= half or y0 >= half:
            options.append((o, f"Is the {o.name} in the top or the bottom half of the picture?",
                            "top" if y1 <= half else "bottom"))
    if not options:
        return None
    _, question, answer = options[int(rng.integers(len(options)))]
    return question, answer


def _qa_existence(rng, scene, cfg):
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        colour, shape = _pick(rng, sorted(present))
        return f"Is there {_a(colour + ' ' + shape)}?", "yes"
    absent = [(c, s) for c in cfg.colours for s in cfg.shapes if (c, s) not in present]
    # Prefer hard negatives that share a colour or a shape with something present, so the answer
    # needs colour and shape bound to the same object, not just "is anything red".
    pool = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
    if cfg.hard_negatives < 1.0 and rng.random() >= cfg.hard_negatives:
        pool = [pair for pair in absent if pair not in pool]  # easy: neither its colour nor its shape is there
    colour, shape = _pick(rng, pool or absent)
    return f"Is there {_a(colour + ' ' + shape)}?", "no"


def make_qa(rng: np.random.Generator, scene: Scene, cfg: ShapesConfig, qa_type: str | None = None):
    """(qa type, question, answer). The type is drawn from cfg.qa_weights unless given; a type the scene
    cannot support unambiguously (no unique shape for "colour", one object for "spatial") is left out
    of the draw, and asking for it explicitly raises."""
    makers = {"colour": lambda: _qa_attribute(rng, scene, "colour"),
              "shape": lambda: _qa_attribute(rng, scene, "shape"),
              "count": lambda: _qa_count(rng, scene, cfg), "spatial": lambda: _qa_spatial(rng, scene),
              "existence": lambda: _qa_existence(rng, scene, cfg), "position": lambda: _qa_position(rng, scene)}
    if qa_type is not None:
        if qa_type not in makers:
            raise ConfigError(f"unknown QA type {qa_type!r}; expected one of {', '.join(QA_TYPES)}")
        made = makers[qa_type]()
        if made is None:
            raise InputError(f"a {qa_type} question cannot be asked unambiguously about this scene")
        return (qa_type, *made)
    weights = [(t, w) for t, w in cfg.qa_weights if w > 0]
    while weights:
        chosen = _weighted(rng, weights)
        made = makers[chosen]()
        if made is not None:
            return (chosen, *made)
        weights = [(t, w) for t, w in weights if t != chosen]
    # Only reachable when every weighted type is impossible here (e.g. only "spatial" with one object).
    raise ConfigError(f"none of the QA types {[t for t, _ in cfg.qa_weights]} can be asked about a scene "
                      f"with {len(scene.objects)} object(s); add count or existence to qa_weights")


def _turn(question: str, answer: str, with_image: bool) -> list[dict]:
    user = [image_part(), text_part(question)] if with_image else [text_part(question)]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [text_part(answer)]}]


def _dialogue(rng, scene: Scene, cfg: ShapesConfig, turns: int, ask, first=None):
    """Up to `turns` QA turns with distinct questions about the scene, the image in the first user turn
    only: (messages, answers, types). ask(question) -> the user text; `first`, when given, is the first
    turn's (type, question, answer), already drawn."""
    asked, messages, answers, types = set(), [], [], []
    for attempt in range(max(20, 8 * turns)):  # small scenes may have fewer than `turns` distinct questions
        qa_type, question, reply = first if first and attempt == 0 else make_qa(rng, scene, cfg)
        if question in asked:
            continue
        asked.add(question)
        messages += _turn(ask(question), reply, with_image=not messages)
        answers.append(reply)
        types.append(qa_type)
        if len(answers) == turns:
            break
    return messages, answers, types


# ---- samples ------------------------------------------------------------------------------------

def sample_at(cfg: ShapesConfig, index: int, kind: str = "mixed") -> dict:
    """Sample `index` of the dataset `cfg` describes, in the normal conversation form:

    {"id", "messages": [...], "images": [PIL image], "kind", "type", "answer", "objects"}

    `type`: caption | detail | colour | shape | count | spatial | existence | conversation |
    grounding | grounding_all. `answer` is the assistant text (a list of the per-turn answers for a
    conversation, with their types in "turn_types"). A qa sample of several turns (cfg.qa_turns) has the
    `type` and `answer` of its last turn, every turn's in "turn_types" and "turn_answers"; its first turn
    is the single-turn sample's. `objects` is the ground truth, one dict per
    shape: {"shape", "colour", "bbox": [x0, y0, x1, y1]} in pixels, ends exclusive."""
    if kind not in (*KINDS, "mixed"):
        raise ConfigError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)} or 'mixed'")
    rng = np.random.default_rng([cfg.seed, index])
    scene = make_scene(rng, cfg)
    size = scene.image_size
    if kind == "mixed":
        kind = _weighted(rng, [(k, w) for k, w in cfg.kind_weights if w > 0])
    extra, wording = {}, phrasing_rng(cfg.seed, index) if cfg.phrasing == "varied" else None
    ask = lambda question: word_question(question, cfg.phrasing, cfg.answer_prompt, wording)  # noqa: E731
    if kind == "caption":
        if rng.random() < 0.5:
            sample_type, question, answer = "caption", _pick(rng, BRIEF_PROMPTS), caption(scene)
        else:
            sample_type, question, answer = "detail", _pick(rng, DETAIL_PROMPTS), describe(scene)
        messages = _turn(question, answer, with_image=True)
    elif kind == "qa":
        first, (lo, hi) = make_qa(rng, scene, cfg), cfg.qa_turns
        turns = int(rng.integers(lo, hi + 1)) if lo < hi else lo  # no draw for a fixed count
        messages, answers, types = _dialogue(rng, scene, cfg, turns, ask, first)
        sample_type, answer = types[-1], answers[-1]
        if len(answers) > 1:
            extra = {"turn_types": types, "turn_answers": answers}
    elif kind == "conversation":
        turns = int(rng.integers(cfg.conversation_turns[0], cfg.conversation_turns[1] + 1))
        messages, answer, types = _dialogue(rng, scene, cfg, turns, ask)
        sample_type, extra = "conversation", {"turn_types": types}
    else:  # grounding, in Qwen-VL's format
        if rng.random() < 0.7 or len(scene.objects) == 1:
            obj = _pick(rng, scene.objects)
            sample_type, question = "grounding", _pick(rng, GROUNDING_PROMPTS).format(name=obj.name)
            answer = format_box(obj.name, to_qwen_box(obj.bbox, size, size))
        else:
            sample_type, question = "grounding_all", LOCATE_ALL_PROMPT
            answer = "\n".join(format_box(o.name, to_qwen_box(o.bbox, size, size)) for o in _left_to_right(scene))
        messages = _turn(question, answer, with_image=True)
    return {"id": f"shapes-{cfg.seed}-{index:06d}", "messages": messages, "images": [render(scene)],
            "kind": kind, "type": sample_type, "answer": answer, **extra,
            "objects": [o.as_dict() for o in scene.objects]}


def samples(cfg: ShapesConfig, n: int, kind: str = "mixed", start: int = 0) -> Iterator[dict]:
    """Samples start .. start+n-1, made one at a time (nothing is kept in memory)."""
    for index in range(start, start + n):
        yield sample_at(cfg, index, kind)
