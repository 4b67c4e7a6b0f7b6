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


# (ours, transformers' warper class and its argument, the setting's range)
FILTERS = {"top_k": (top_k_filter, "TopKLogitsWarper", st.integers(1, 60)),
           "top_p": (top_p_filter, "TopPLogitsWarper", st.floats(0.01, 1.0)),
           "min_p": (min_p_filter, "MinPLogitsWarper", st.floats(0.0, 1.0))}


@pytest.mark.parametrize("name", list(FILTERS))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 10_000), ties=st.booleans())
def test_filter_keeps_the_same_set(name, data, seed, ties):
    ours, warper, values = FILTERS[name]
    value = data.draw(values, label=name)
    x = _logits(seed, ties)
    expected = getattr(tf_proc, warper)(**{name: value})(None, x.clone())
    assert torch.equal(ours(x, value).isinf(), expected.isinf())


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
