"""Model-card details written out by hand: the micro-averaged 'all' row is never listed as a weak question type
(it is the average of the types, not one of them), and a reward model's card is not tagged as a chat pipeline
(its export scores completions; it does not generate them) while a DPO policy's is."""
import json

from ocellus.hub.model_card import EVAL_BEGIN, EVAL_END, record_eval, write_model_card


def _card(tmp_path, task: str) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["X"]}))
    return write_model_card(tmp_path, {"task": task, "name": "n", "data": {"source": "shapes"}}).read_text()


def test_the_all_row_is_not_a_weak_type(tmp_path):
    _card(tmp_path, "vlm")
    record_eval(tmp_path, {"task": "shapes-vqa", "n": 10, "table": {"all": (10, 0.5), "count": (5, 0.2),
                                                                      "colour": (5, 0.8)}}, "ocellus eval")
    text = (tmp_path / "README.md").read_text()
    section = text.split(EVAL_BEGIN)[1].split(EVAL_END)[0]
    weak = [line for line in section.splitlines() if line.startswith("Weak")]
    assert weak == ["Weak (below 60%): count (20.0%)."]


def test_pipeline_tags_of_a_reward_model_and_a_policy(tmp_path):
    for task, tag in (("rm", "other"), ("dpo", "image-text-to-text"), ("vlm", "image-text-to-text"),
                      ("lm", "text-generation")):
        (tmp_path / task).mkdir()
        assert f"pipeline_tag: {tag}\n" in _card(tmp_path / task, task), task
