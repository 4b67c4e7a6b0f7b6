"""Grounding evaluation pieces: mean IoU next to acc@0.5, and answers decoded with their <ref>/<box>
special tokens kept (the shapes BPE makes them special, so skipping specials would erase the markup)."""
import pytest

from ocellus.errors import InputError
from ocellus.eval.grounding import box_iou, grounding_hit
from ocellus.eval.harness import _answer, score


class _Proc:
    def __init__(self, tok):
        self.tokenizer, self.eos_token_id = tok, tok.eos_token_id

    def decode(self, ids, skip_special_tokens=False):
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_box_iou_is_the_mean_iou_term():
    gold = "<ref>red circle</ref><box>(0,0),(100,100)</box>"
    assert box_iou("<ref>red circle</ref><box>(0,0),(100,100)</box>", gold) == 1.0
    assert box_iou("<box>(0,0),(100,50)</box>", gold) == pytest.approx(0.5)
    assert box_iou("no box here", gold) == 0.0 and box_iou("<box>(5,5),(1,1)</box>", gold) == 0.0
    assert grounding_hit("<box>(0,0),(100,50)</box>", gold) == 1.0   # IoU 0.5 reaches the threshold
    with pytest.raises(InputError, match="no well-formed box"):
        box_iou("<box>(0,0),(1,1)</box>", "nothing")


def test_grounding_score_reports_accuracy_and_mean_iou():
    samples = [{"type": "grounding", "answer": "<ref>a</ref><box>(0,0),(100,100)</box>"}] * 2
    result = score("shapes-grounding", samples, ["<box>(0,0),(100,100)</box>", "<box>(0,0),(100,40)</box>"])
    assert result["table"]["all"] == (2, 0.5)
    assert result["mean_iou"] == pytest.approx((1.0 + 0.4) / 2)


def test_answers_keep_grounding_tokens_and_stop_at_end_of_turn(tiny_vlm_parts):
    from ocellus.data.tokenizer import Tokenizer
    tok = Tokenizer.from_dir(tiny_vlm_parts / "text" / "model")
    text = "<ref>red circle</ref><box>(1,2),(3,4)</box>"
    ids = tok.encode(text + "<|im_end|><|endoftext|><|endoftext|>", add_special_tokens=False)
    assert _answer(_Proc(tok), ids, keep_special=True) == text
    assert _answer(_Proc(tok), ids, keep_special=False) == "red circle(1,2),(3,4)"   # why grounding keeps them
