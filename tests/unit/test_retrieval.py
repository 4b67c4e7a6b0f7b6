"""Retrieval recall@K, zero-shot classification and the linear probe on hand-made cases."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.eval.retrieval import (linear_probe, recall_at_k, retrieval_metrics, zero_shot_accuracy,
                                    zero_shot_weights)


def test_recall_at_k_counts_rank_of_first_correct_item():
    sim = torch.tensor([[0.9, 0.1, 0.5],      # correct item 0 at rank 1
                        [0.9, 0.1, 0.5],      # correct item 1 at rank 3
                        [0.2, 0.9, 0.5]])     # correct item 2 at rank 2
    correct = torch.eye(3, dtype=torch.bool)
    assert recall_at_k(sim, correct, ks=(1, 2, 3)) == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})
    # several correct items: query 1 also accepts item 0 -> hit at rank 1
    correct[1, 0] = True
    assert recall_at_k(sim, correct, ks=(1,))[1] == pytest.approx(2 / 3)


def test_recall_needs_a_correct_item_per_query():
    with pytest.raises(InputError, match=r"queries \[1\]"):
        recall_at_k(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def test_retrieval_both_directions_with_two_captions_per_image():
    img = F.normalize(torch.eye(3, 4), dim=-1)                    # 3 images
    txt = F.normalize(torch.tensor([[1., 0, 0, 0], [1., .1, 0, 0], [0, 1., 0, 0], [0, 0, 0, 1.]]), dim=-1)
    text_image = torch.tensor([0, 0, 1, 2])                       # text 3 points away from its image 2
    m = retrieval_metrics(img, txt, text_image, ks=(1, 3))
    assert m["t2i_R@1"] == pytest.approx(3 / 4) and m["t2i_R@3"] == 1.0
    assert m["i2t_R@1"] == pytest.approx(2 / 3)                   # image 2's best text is not its own


def test_zero_shot_weights_average_templates_and_classify():
    table = {"a red circle": [1., 0, 0], "the red circle": [0.8, 0.2, 0], "a blue square": [0, 1., 0],
             "the blue square": [0, 0.9, 0.1]}
    enc = lambda texts: torch.tensor([table[t] for t in texts])   # noqa: E731
    w = zero_shot_weights(enc, ["red circle", "blue square"], templates=("a {}", "the {}"))
    expect0 = F.normalize(F.normalize(torch.tensor([1., 0, 0]), dim=0) + F.normalize(torch.tensor([.8, .2, 0]), dim=0),
                          dim=0)
    torch.testing.assert_close(w[0], expect0)
    images = torch.tensor([[1., 0.1, 0], [0.1, 1., 0], [0.2, 0.9, 0]])
    assert zero_shot_accuracy(images, torch.tensor([0, 1, 0]), w) == pytest.approx(2 / 3)


def test_linear_probe_separates_separable_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=g)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) > 0.95
    noise = torch.randn(400, 16, generator=g)
    assert linear_probe(noise[:300], y[:300], noise[300:], y[300:]) < 0.45
