"""`ocellus demo`'s own logic (ocellus/demo.py) on the embedded default model: a new scene per image, every
question's ground truth from its scene, each answer judged as the eval harness judges it (count words too), the
accuracy over the questions asked, the table's verdicts, and the heat map on a colour question."""
import numpy as np

from ocellus.demo import _correct, demo_questions, run_demo


def test_each_image_is_a_new_scene_with_one_question_per_type_it_supports():
    rows = demo_questions(4, 48)
    images = {r["image"]: np.asarray(r["sample"]["images"][0]) for r in rows}
    assert sorted(images) == [0, 1, 2, 3]
    assert all(not np.array_equal(images[a], images[b]) for a in images for b in images if a < b)
    for k in images:
        types = [r["type"] for r in rows if r["image"] == k]
        assert len(types) == len(set(types)) and "count" in types and "existence" in types
    again = demo_questions(4, 48)                                                        # seeded
    assert [(r["image"], r["question"], r["answer"]) for r in again] == [(r["image"], r["question"], r["answer"])
                                                                         for r in rows]


def test_answers_are_judged_as_the_harness_judges_them():
    assert _correct("Red", "red") and not _correct("blue", "red")
    assert _correct("two", "2") and _correct("2", "2") and not _correct("3", "2")


def test_run_reports_the_accuracy_over_the_questions_and_a_colour_heat_map(tmp_path):
    lines = []
    out = run_demo(tmp_path, n_images=3, seed=0, printer=lines.append)    # seed 0: image 0 has no colour question
    rows = out["rows"]
    assert out["accuracy"] == sum(_correct(r["pred"], r["answer"]) for r in rows) / len(rows)
    assert out["accuracy"] >= 0.6                                 # the shipped model answers most of them
    table = next(line for line in lines if "truth" in line)
    assert table.count("WRONG") == sum(not r["ok"] for r in rows)
    assert [p.name for p in out["images"]] == ["image_0.png", "image_1.png", "image_2.png"]
    colour = next(r for r in rows if r["type"] == "colour")
    assert any(f"image {colour['image']}, {colour['question']!r}" in line for line in lines if "wrote" in line)
