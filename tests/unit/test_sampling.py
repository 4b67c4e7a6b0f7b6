"""Each filter keeps exactly the token set transformers' warper keeps, ties included."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ocellus.infer.sampling import min_p_filter, repetition_penalty, top_k_filter, top_p_filter

tf_proc = pytest.importorskip("transformers.generation.logits_process")


def _logits(seed, ties):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 50, generator=g) * 3
    if ties:  # coarse values make ties at the cut-off likely
        x = x.round()
    return x


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), ties=st.booleans(), k=st.integers(1, 60))
def test_top_k_same_set(seed, ties, k):
    x = _logits(seed, ties)
    expected = tf_proc.TopKLogitsWarper(top_k=k)(None, x.clone())
    assert torch.equal(top_k_filter(x, k).isinf(), expected.isinf())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), ties=st.booleans(), p=st.floats(0.01, 1.0))
def test_top_p_same_set(seed, ties, p):
    x = _logits(seed, ties)
    expected = tf_proc.TopPLogitsWarper(top_p=p)(None, x.clone())
    assert torch.equal(top_p_filter(x, p).isinf(), expected.isinf())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), ties=st.booleans(), m=st.floats(0.0, 1.0))
def test_min_p_same_set(seed, ties, m):
    x = _logits(seed, ties)
    expected = tf_proc.MinPLogitsWarper(min_p=m)(None, x.clone())
    assert torch.equal(min_p_filter(x, m).isinf(), expected.isinf())


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = ~top_p_filter(probs.log(), 0.8).isinf()
    assert kept.tolist() == [[True, True, False, False]]      # 0.5 + 0.3 reaches 0.8
    kept = ~top_p_filter(probs.log(), 0.81).isinf()
    assert kept.tolist() == [[True, True, True, False]]


def test_repetition_penalty_matches_transformers():
    x = _logits(0, False)
    seen = torch.randint(0, 50, (4, 7))
    expected = tf_proc.RepetitionPenaltyLogitsProcessor(penalty=1.5)(seen, x.clone())
    torch.testing.assert_close(repetition_penalty(x, seen, 1.5), expected)
