"""Edges of the eval metrics, each worked out by hand from the rule it follows.

VQA (the official vqaEval.py rules, ocellus/eval/vqa.py's docstring): number words are mapped after lower-casing
("TWO" -> "2"); the period strip removes at most 32 periods (`periodStrip.sub("", text, re.UNICODE)`: the flag lands
in `count`); punctuation is deleted everywhere only when a digit-comma-digit occurs, a digit followed by a comma
alone does not switch it. Counting reads "twenty-nine" as 29. Grounding (Qwen-VL's boxes): coordinates live in
[0, 1000), so 1000 is malformed; two zero-area boxes have IoU 0 (no union), and acc at threshold 1.0 is valid."""
import pytest

from ocellus.eval.grounding import grounding_accuracy, iou, parse_boxes
from ocellus.eval.vqa import normalize_vqa_answer, parse_count, vqa_exact_match


@pytest.mark.parametrize("raw,expected", [
    ("TWO", "2"), ("Three Dogs", "3 dogs"), ("NONE", "0"), ("Ten", "10"),
    ("wait" + "." * 40, "wait" + "." * 8),       # 32 periods removed, the rest kept (the official quirk)
    ("3,x-y", "3 x y"),                          # no digit-comma-digit: ',' and '-' become spaces
    ("3,000 x-y", "3000 xy"),                    # a digit-comma-digit: every mark is deleted
])
def test_vqa_normalisation_follows_the_official_rules(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_vqa_number_words_match_digits_in_any_case():
    assert vqa_exact_match("Two", "2") == 1.0 and vqa_exact_match("FOUR", "four") == 1.0


@pytest.mark.parametrize("text,count", [("twenty-nine", 29), ("thirty nine birds", 39), ("twenty-one", 21),
                                        ("ninety-nine", 99), ("twenty", 20)])
def test_tens_and_units_words(text, count):
    assert parse_count(text) == count


def test_box_coordinates_stop_below_1000():
    assert parse_boxes("<box>(0,0),(999,999)</box>")[0].box == (0, 0, 999, 999)
    for body in ("(0,0),(1000,10)", "(0,1000),(5,1000)"):
        (parsed,) = parse_boxes(f"<box>{body}</box>")
        assert parsed.box is None and "outside [0, 1000)" in parsed.reason


def test_zero_area_boxes_and_the_closed_threshold():
    assert iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0
    assert iou((0, 0, 0, 5), (0, 0, 0, 5)) == 0.0
    assert grounding_accuracy([(0, 0, 2, 2), (0, 0, 2, 3)], [(0, 0, 2, 2)] * 2, threshold=1.0) == pytest.approx(0.5)


def test_a_bool_gold_count_and_a_bottom_up_box_are_errors():
    from ocellus.errors import InputError
    from ocellus.eval.vqa import count_match
    with pytest.raises(InputError, match="gold count must be an int or a str, got bool"):
        count_match("1", True)
    with pytest.raises(InputError, match="x2 < x1 or y2 < y1"):
        iou((0, 2, 2, 0), (0, 0, 2, 2))
    with pytest.raises(InputError, match="x2 < x1 or y2 < y1"):
        iou((0, 0, 2, 2), (2, 0, 0, 2))
