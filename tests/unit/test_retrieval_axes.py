"""Retrieval and zero-shot metrics on rectangular inputs, where the two axes cannot be confused: recall@K asks
every QUERY (row) to have a correct item and does not care about items no query matches; the t2i / i2t metrics
need one image index per text; zero-shot scores each image against each class weight, whatever the image
embeddings' norms (a per-image scale never changes which class wins); embed_in_batches keeps a last batch of
one."""
import pytest
import torch

from ocellus.errors import InputError
from ocellus.eval.retrieval import embed_in_batches, recall_at_k, retrieval_metrics, zero_shot_accuracy


def test_recall_needs_a_correct_item_per_query_not_per_item():
    sim = torch.tensor([[0.9, 0.1, 0.5],
                        [0.2, 0.3, 0.8]])
    correct = torch.tensor([[True, False, False],
                            [False, True, False]])         # item 2 is nobody's answer: fine
    assert recall_at_k(sim, correct, ks=(1, 2)) == pytest.approx({1: 0.5, 2: 1.0})   # query 1: item 1 at rank 2
    with pytest.raises(InputError, match=r"queries \[1\] have no correct item"):
        recall_at_k(sim.t()[:2], torch.tensor([[True, False], [False, False]]))


def test_text_image_gives_one_image_per_text():
    img, txt = torch.eye(3), torch.eye(4, 3)
    with pytest.raises(InputError, match="text_image must give one image index per text"):
        retrieval_metrics(img, txt, torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="text_image must give one image index per text"):
        retrieval_metrics(img, txt, torch.tensor([0, 1, 2, 2, 0]))


def test_zero_shot_prediction_ignores_each_images_own_norm():
    weights = torch.eye(2)                                  # class c = axis c
    images = torch.tensor([[1.0, 0.9],                     # class 0, barely
                           [100.0, 0.0]])                  # class 0, a long embedding
    labels = torch.tensor([0, 0])
    by_hand = (images @ weights.t()).argmax(1)              # a positive per-image scale does not change the argmax
    assert by_hand.tolist() == [0, 0]
    assert zero_shot_accuracy(images, labels, weights) == 1.0


@pytest.mark.parametrize("n, b", [(5, 2), (4, 2), (1, 3), (7, 3)])
def test_embed_in_batches_keeps_every_item(n, b):
    out = embed_in_batches(lambda items: torch.tensor(items, dtype=torch.float32)[:, None], list(range(n)), b)
    assert out.flatten().tolist() == list(range(n))
