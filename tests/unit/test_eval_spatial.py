"""scripts/eval_spatial.py asks only the position types, on the eval seed's scenes, and sorts them by form."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from eval_spatial import form, questions  # noqa: E402


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
