"""VQA accuracy: the official answer normalisation, exact match, the 10-human soft score,
and counting accuracy.

Reference: Antol et al. 2015, "VQA: Visual Question Answering" (and Goyal et al. 2017, VQA v2),
official evaluation script `vqaEval.py` in github.com/GT-Vision-Lab/VQA
(PythonEvaluationTools/vqaEvaluation). This file re-implements its rules; it does not copy it.

Normalisation (`normalize_vqa_answer`), in the official order:

1. newlines and tabs become spaces, then leading/trailing whitespace is stripped;
2. punctuation (`processPunctuation`): each of  ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !
   is *deleted* if the original answer has it next to a space, or if the answer contains a
   digit-comma-digit anywhere ("1,000" -> "1000"); otherwise it is *replaced by a space*
   ("black-white" -> "black white"). Then a period not followed by a digit is deleted
   ("3.5" keeps its period). Apostrophes and colons are left alone;
3. lower-case and split on whitespace (`processDigitArticle`);
4. number words zero..ten (and "none") become digits: "two" -> "2", "none" -> "0";
5. the articles "a", "an", "the" are dropped;
6. a contractions table restores apostrophes: "dont" -> "don't", "whats" -> "what's";
7. words are re-joined with single spaces.

The official script normalises the prediction fully but the ground-truth answers only with
step 2, and only when the humans disagree, because the VQA annotation files store answers that
are already normalised. We normalise both sides fully: on the official annotations that gives the
same result (normalising twice changes nothing, barring the 32-period cap below; see the
tests), and on gold
answers written by hand ("Two", "the dog") it does what a user expects.
"""

import re

from ocellus.errors import InputError

# Deleted or replaced by a space (see step 2 above). Note: no apostrophe, no colon, no period.
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!"]
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": the first group is a look-*ahead* (a typo for a
# look-behind) that can never fail in front of a '.', so it is just "a period not before a digit".
_PERIOD = re.compile(r"\.(?!\d)")
# The official call is `periodStrip.sub("", text, re.UNICODE)`: the third positional argument of
# Pattern.sub is `count`, and re.UNICODE == 32, so at most 32 periods are removed. We keep that.
_PERIOD_MAX_REMOVALS = 32

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}

# Contractions written without their apostrophe -> the canonical form. The official table also
# has keys with capitals ("Im", "Ive", "Id've", "I'dve"); words are lower-cased before the lookup,
# so those entries can never fire and are left out here ("im" stays "im", as officially).
# Oddities kept on purpose because they change scores: "somebody'd" -> "somebodyd".
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def _check_str(value, what):
    if not isinstance(value, str):
        raise InputError(f"{what} must be a str, got {type(value).__name__}: {value!r}")


def _strip_punctuation(text: str) -> str:
    """Step 2 (official `processPunctuation`)."""
    # The delete-or-space decision looks at the *original* text for every mark, and a single
    # digit-comma-digit anywhere switches every mark to "delete", exactly as officially.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCT:
        delete = delete_all or (p + " " in text) or (" " + p in text)
        out = out.replace(p, "" if delete else " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVALS)


def normalize_vqa_answer(answer: str) -> str:
    """The official VQA normalisation (steps 1-7 in the module docstring).

    >>> normalize_vqa_answer("Two dogs.")
    '2 dogs'
    >>> normalize_vqa_answer("The  cat isnt black-white!")
    "cat isn't black white"
    """
    _check_str(answer, "answer")
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_exact_match(pred: str, gold: str) -> float:
    """1.0 if the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalize_vqa_answer(pred) == normalize_vqa_answer(gold))


def vqa_soft_score(pred: str, gold_answers: list[str]) -> float:
    """The official VQA accuracy of one prediction against the human answers (10 in VQA v2).

    Antol et al. define  acc = min(1, #humans that gave the answer / 3); the official script
    averages it over the 10 subsets of 9 humans: for each human i,
        acc_i = min(1, #{j != i : gold_j == pred} / 3)   and   acc = mean_i acc_i.
    So 3 matching humans out of 10 give (7 * 1 + 3 * 2/3) / 10 = 0.9, not 1.0.
    Works for any number of answers >= 1 (with one answer it is always 0: nobody is left).
    """
    _check_str(pred, "pred")
    if isinstance(gold_answers, str) or not gold_answers:
        raise InputError(
            f"gold_answers must be a non-empty list of str (the human answers), got {gold_answers!r}")
    p = normalize_vqa_answer(pred)
    golds = [normalize_vqa_answer(g) for g in gold_answers]
    matches = sum(g == p for g in golds)
    # Leaving out human i removes one match exactly when human i matched.
    per_subset = [min(1.0, (matches - (g == p)) / 3.0) for g in golds]
    return sum(per_subset) / len(per_subset)


# --- counting ------------------------------------------------------------------------------

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_VALUE = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_WORD_VALUE["none"] = 0  # as in the VQA number map: "how many ...?" -> "none" means 0
# A number is digits ("1,000" and "3.0" allowed) or a number word, optionally "twenty-one" /
# "twenty one". \b keeps "someone" or "often" from reading as 1 or 10.
_COUNT = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w])"
    r"|\b(" + "|".join(_TENS) + r")[\s-]+(" + "|".join(_UNITS[1:10]) + r")\b"
    r"|\b(" + "|".join(sorted(_WORD_VALUE, key=len, reverse=True)) + r")\b",
    re.IGNORECASE)


def parse_count(text: str) -> int | None:
    """The first count in `text`: an integer ("3", "1,000", "3.0") or a number word
    ("three", "twenty-one", "none"), or None if there is none or the first number is not a
    whole number ("2.5"). Only zero..ninety-nine are read as words; larger counts as digits."""
    _check_str(text, "text")
    m = _COUNT.search(text)
    if m is None:
        return None
    digits, frac, tens, unit, word = m.groups()
    if digits is not None:
        if frac is not None and float(frac) != 0.0:
            return None  # "2.5 apples" is not a count; do not round it into one
        return int(digits.replace(",", ""))
    if tens is not None:
        return _WORD_VALUE[tens.lower()] + _WORD_VALUE[unit.lower()]
    return _WORD_VALUE[word.lower()]


def count_match(pred: str, gold: int | str) -> float:
    """1.0 if the first count in `pred` equals `gold` (an int or a string holding a count)."""
    if isinstance(gold, bool) or not isinstance(gold, (int, str)):
        raise InputError(f"gold count must be an int or a str, got {type(gold).__name__}: {gold!r}")
    target = gold if isinstance(gold, int) else parse_count(gold)
    if target is None:
        raise InputError(f"gold answer {gold!r} holds no count (expected e.g. 3 or 'three')")
    return float(parse_count(pred) == target)


def counting_accuracy(preds: list[str], golds: list[int | str]) -> float:
    """Fraction of predictions whose first count (see `parse_count`) equals the gold count.
    A prediction without any number counts as wrong; a gold without one is an error."""
    if len(preds) != len(golds):
        raise InputError(f"{len(preds)} predictions but {len(golds)} gold counts")
    if not preds:
        raise InputError("counting_accuracy needs at least one prediction")
    return sum(count_match(p, g) for p, g in zip(preds, golds)) / len(preds)
