"""Evaluation formulas on cases where the answer is written out by hand: VQA's leave-one-out soft score
and normalisation, IoU and the inclusive acc@0.5 threshold, recall@K ranks, the zero-shot classifier
(renormalised template means), and the micro-averaged 'all' row of score_by_type."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.eval.grounding import grounding_accuracy, grounding_hit, iou
from ocellus.eval.metrics import score_by_type
from ocellus.eval.retrieval import recall_at_k, zero_shot_weights
from ocellus.eval.vqa import normalize_vqa_answer, vqa_exact_match, vqa_soft_score


@pytest.mark.parametrize("matches", range(0, 11))
def test_vqa_soft_score_is_the_mean_over_leave_one_out_subsets(matches):
    golds = ["cat"] * matches + ["dog"] * (10 - matches)
    expected = sum(min(1.0, sum(g == "cat" for j, g in enumerate(golds) if j != i) / 3) for i in range(10)) / 10
    assert vqa_soft_score("cat", golds) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("raw,expected", [
    ("The dog", "dog"), ("an apple a day", "apple day"),
    ("black-white", "black white"), ("black - white", "black white"),
    ("yes!", "yes"), ("1,000 people", "1000 people"), ("3.5 feet.", "3.5 feet"), ("dont", "don't"),
])
def test_vqa_normalisation_cases(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_iou_by_hand_and_the_threshold_is_inclusive():
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert iou((0, 0, 4, 2), (0, 0, 2, 2)) == pytest.approx(0.5)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert grounding_hit((0, 0, 4, 2), (0, 0, 2, 2)) == 1.0          # IoU exactly 0.5 counts
    assert grounding_accuracy([(0, 0, 4, 2), (0, 0, 5, 2)], [(0, 0, 2, 2)] * 2) == pytest.approx(0.5)


def test_recall_at_k_by_rank_of_the_correct_item():
    # query q's correct item sits at rank q (0-based) of its similarities
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.2, 0.5, 0.9, 0.1], [0.3, 0.8, 0.1, 0.9], [0.7, 0.6, 0.5, 0.4]])
    correct = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert recall_at_k(sim, correct, ks=(1, 2, 3, 4)) == pytest.approx({1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0})


def test_zero_shot_weights_are_renormalised_means_of_normalised_prompts():
    torch.manual_seed(0)
    table = {}

    def encode(texts):
        return torch.stack([table.setdefault(t, torch.randn(6) * (1 + len(t))) for t in texts])

    w = zero_shot_weights(encode, ["cat", "dog"], templates=("a {}", "the {} here", "{}"))
    for c, name in enumerate(["cat", "dog"]):
        emb = F.normalize(encode([t.format(name) for t in ("a {}", "the {} here", "{}")]), dim=-1)
        torch.testing.assert_close(w[c], F.normalize(emb.mean(0), dim=-1))
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(2))


def test_score_by_type_all_is_the_micro_average():
    records = [{"type": "yes/no", "pred": p, "gold": "yes"} for p in ("yes", "yes", "yes", "no")] + \
              [{"type": "number", "pred": "2", "gold": "3"}]
    out = score_by_type(records, vqa_exact_match)
    assert out == {"number": (1, 0.0), "yes/no": (4, 0.75), "all": (5, pytest.approx(3 / 5))}

