"""scripts/vqa_errors.py sorts a wrong answer to a binding question by whose attribute it is."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from vqa_errors import error_kind, tally  # noqa: E402

SCENE = [{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}]


def test_a_wrong_answer_is_another_objects_or_absent():
    shape_q = {"type": "shape", "answer": "circle", "objects": SCENE}      # "What shape is the red object?"
    colour_q = {"type": "colour", "answer": "blue", "objects": SCENE}      # "What colour is the square?"
    assert error_kind(shape_q, "circle") == "right"
    assert error_kind(shape_q, "square") == "another object's"          # the blue object's shape
    assert error_kind(shape_q, "red") == "absent"                        # a colour is no shape of this scene
    assert error_kind(colour_q, "red") == "another object's"
    assert error_kind(colour_q, "green") == "absent"
    one = {"type": "shape", "answer": "star", "objects": [{"shape": "star", "colour": "red"}]}
    assert tally([shape_q, colour_q, one], ["square", "blue", "cross"]) == {
        ("shape", 2, "another object's"): 1, ("colour", 2, "right"): 1, ("shape", 1, "absent"): 1}
