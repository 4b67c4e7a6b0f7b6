"""How a shapes QA question is worded: one canonical question, several ways to ask it.

A model trained only on the canonical wording ("What colour is the circle?" + "Answer the question using
a single word or phrase.") learns the wording along with the task: asked "What color is the circle?" it
may answer "No". `word_question` rewrites a canonical question (as shapes.make_qa writes it) into one
of the paraphrases of its form, in UK or US spelling, with or without the short-answer suffix.

Modes (ShapesConfig.phrasing):
  canonical  the question as made, then the suffix when the config has one; no draws (the data as it
             always was)
  us         the same in US spelling ("color"); no draws
  varied     per question: a paraphrase of its form (uniform), US or UK spelling (half each), the
             suffix or none (half each, when the config has one)

The draws of "varied" come from a stream of their own, `phrasing_rng(seed, index)`, never from the
sample's rng: the scene, the question asked and its answer are those the canonical config makes for
the same index; only the words change.
"""
from __future__ import annotations

import re

import numpy as np

from ocellus.errors import ConfigError

PHRASINGS = ("canonical", "us", "varied")
_STREAM = 1  # the phrasing stream of sample i: default_rng([seed, i, _STREAM]) (the sample's own is [seed, i])

_NAME = r"\w+ \w+"  # "red circle": every object is named by its colour and shape
# form -> (the canonical question as a pattern, its paraphrases). The first paraphrase is the canonical
# wording itself; each keeps the answer's form (a colour, a shape, a count, left/right, above/below, yes/no).
FORMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "colour": (r"What colour is the (?P<shape>\w+)\?",
               ("What colour is the {shape}?", "What is the colour of the {shape}?", "Which colour is the {shape}?",
                "What colour does the {shape} have?")),
    "shape": (r"What shape is the (?P<colour>\w+) object\?",
              ("What shape is the {colour} object?", "What is the shape of the {colour} object?",
               "Which shape is {colour}?", "What kind of shape is the {colour} one?")),
    "count": (r"How many (?P<things>[\w ]+) are there\?",
              ("How many {things} are there?", "How many {things} do you see?", "Count the {things}.",
               "How many {things} are in the image?")),
    "side": (rf"Is the (?P<a>{_NAME}) to the left or to the right of the (?P<b>{_NAME})\?",
             ("Is the {a} to the left or to the right of the {b}?", "Is the {a} left or right of the {b}?",
              "Is the {a} on the left or on the right of the {b}?")),
    "level": (rf"Is the (?P<a>{_NAME}) above or below the (?P<b>{_NAME})\?",
              ("Is the {a} above or below the {b}?", "Is the {a} above the {b} or below it?",
               "Relative to the {b}, is the {a} above or below?")),
    "relation": (rf"Is the (?P<a>{_NAME}) (?P<rel>to the left of|to the right of|above|below) the (?P<b>{_NAME})\?",
                 ("Is the {a} {rel} the {b}?", "Is the {a} located {rel} the {b}?",
                  "Is the {a} positioned {rel} the {b}?")),
    "half": (rf"Is the (?P<a>{_NAME}) in the (?P<pair>left or the right|top or the bottom) half of the picture\?",
             ("Is the {a} in the {pair} half of the picture?", "In which half of the picture is the {a}, the {pair}?",
              "Is the {a} on the {pair} half of the image?")),
    "existence": (r"Is there (?P<thing>an? \w+ \w+)\?",
                  ("Is there {thing}?", "Do you see {thing}?", "Is there {thing} in the image?",
                   "Does the image contain {thing}?")),
}
_PATTERNS = {form: re.compile(pattern) for form, (pattern, _) in FORMS.items()}
US_SPELLING = {"colour": "color", "grey": "gray", "centre": "center"}
_UK_WORDS = re.compile(r"\b(" + "|".join(US_SPELLING) + r")\b", re.IGNORECASE)


def phrasing_rng(seed: int, index: int) -> np.random.Generator:
    """The wording draws of sample `index`: a stream apart from the sample's default_rng([seed, index])."""
    return np.random.default_rng([seed, index, _STREAM])


def to_us(text: str) -> str:
    """UK -> US spelling, word by word, keeping a leading capital ("Colour" -> "Color")."""
    def us(m):
        word = US_SPELLING[m.group(1).lower()]
        return word.capitalize() if m.group(1)[0].isupper() else word
    return _UK_WORDS.sub(us, text)


def form_of(question: str) -> tuple[str, dict]:
    """(form, slots) of a canonical question; ConfigError for a wording this module does not know."""
    for form, pattern in _PATTERNS.items():
        m = pattern.fullmatch(question)
        if m:
            return form, m.groupdict()
    raise ConfigError(f"no paraphrases for the question {question!r}: add its form to shapes_phrasing.FORMS")


def word_question(question: str, phrasing: str, answer_prompt: str | None,
                  rng: np.random.Generator | None = None) -> str:
    """The user text of a canonical QA question under `phrasing` (see the module docstring); `rng` (from
    phrasing_rng) is drawn from only by "varied": paraphrase, spelling, suffix, in that order."""
    if phrasing not in PHRASINGS:
        raise ConfigError(f"unknown phrasing {phrasing!r}; expected one of {', '.join(PHRASINGS)}")
    us, suffix = phrasing == "us", answer_prompt
    if phrasing == "varied":
        form, slots = form_of(question)
        templates = FORMS[form][1]
        question = templates[int(rng.integers(len(templates)))].format(**slots)
        us = bool(rng.random() < 0.5)
        suffix = answer_prompt if rng.random() < 0.5 else None
    text = f"{question}\n{suffix}" if suffix else question
    return to_us(text) if us else text
