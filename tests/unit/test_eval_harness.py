"""The eval harness: held-out samples, few-shot prompts, scoring per type, end to end on a tiny model."""
import pytest

from ocellus.errors import ConfigError
from ocellus.eval.harness import _conversation, evaluate, score, task_samples


def test_perfect_and_wrong_predictions_score_1_and_0():
    for task in ("shapes-vqa", "shapes-grounding", "digits"):
        samples = task_samples(task, 30, 48)
        right = score(task, samples, [s["answer"] for s in samples])["table"]
        assert right["all"] == (30, 1.0), task
        wrong = score(task, samples, ["zzz"] * 30)["table"]
        assert wrong["all"] == (30, 0.0), task
    caps = task_samples("shapes-caption", 10, 48)
    table = score("shapes-caption", caps, [s["references"][0] for s in caps])["table"]
    assert table["BLEU-4"][1] == pytest.approx(1.0)


def test_counting_accepts_number_words():
    samples = [s for s in task_samples("shapes-vqa", 80, 48) if s["type"] == "count"][:3]
    words = {"1": "one", "2": "two", "3": "three", "4": "four", "0": "zero"}
    table = score("shapes-vqa", samples, [words[s["answer"]] for s in samples])["table"]
    assert table["count"][1] == 1.0


def test_shots_become_earlier_turns_with_their_images():
    pool = task_samples("shapes-vqa", 3, 48)
    messages, images = _conversation(pool[2], pool[:2])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"][0]["text"] == pool[0]["answer"]
    assert len(images) == 3 and images[-1] is pool[2]["images"][0]


def test_held_out_seed_differs_from_training_seeds():
    from ocellus.data.shapes import ShapesConfig, sample_at
    eval_ids = {s["id"] for s in task_samples("shapes-vqa", 5, 48)}
    train_ids = {sample_at(ShapesConfig(image_size=48, seed=s), 0, "qa")["id"] for s in range(10)}
    assert not eval_ids & train_ids


def test_unknown_task():
    with pytest.raises(ConfigError, match="unknown eval task"):
        evaluate(None, "imagenet", model=object(), processor=object())
