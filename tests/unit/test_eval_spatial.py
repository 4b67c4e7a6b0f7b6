"""scripts/eval_spatial.py asks only the position types, on the eval seed's scenes, and sorts them by form; with
--via-boxes it answers each question from the named objects' true boxes exactly."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from eval_spatial import answer_from_boxes, form, parse_question, questions  # noqa: E402


def test_questions_are_of_the_asked_type_and_sorted_by_form():
    spatial, position = questions("spatial", 40, 48), questions("position", 40, 48)
    assert len(spatial) == len(position) == 40
    assert {s["type"] for s in spatial} == {"spatial"} and {s["type"] for s in position} == {"position"}
    forms = {form(s) for s in spatial}
    assert forms == {"which side", "yes/no"}
    for s in spatial:      # the form follows the answer: a direction or yes / no
        assert (s["answer"] in ("yes", "no")) == (form(s) == "yes/no")
        assert form(s) == "yes/no" or s["answer"] in ("left", "right", "above", "below")
    assert {s["answer"] for s in position} <= {"left", "right", "top", "bottom"}
    assert {form(s) for s in position} == {"position"}
    assert len({s["messages"][0]["content"][-1]["text"] for s in spatial}) > 30     # different scenes, not one repeated


def test_the_true_boxes_answer_every_question():
    """Each question's named objects found in its scene, their true boxes' centres given to answer_from_boxes:
    the gold answer every time (the question's objects, axis and asked relation are all read right)."""
    for s in questions("spatial", 60, 48) + questions("position", 30, 48):
        names, what = parse_question(s["messages"][0]["content"][-1]["text"])
        boxes = {f"{o['colour']} {o['shape']}": o["bbox"] for o in s["objects"]}
        centres = [((boxes[n][0] + boxes[n][2]) / 2 * 1000 / 48, (boxes[n][1] + boxes[n][3]) / 2 * 1000 / 48)
                   for n in names]
        assert answer_from_boxes(what, centres) == s["answer"], (s["messages"][0]["content"][-1]["text"], s["objects"])
    assert answer_from_boxes("side x", [(10, 10), None]) is None
