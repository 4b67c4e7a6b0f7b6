"""The digits split sizes: the test split is round(n * test_fraction) indices (rounded to nearest, not
truncated: 1797 * 0.1 = 179.7 -> 180), the train split the rest, the two disjoint and together all of range(n)."""
import numpy as np
import pytest

from ocellus.data.digits import split_indices


@pytest.mark.parametrize("n,fraction,n_test", [(1797, 0.1, 180), (1797, 0.2, 359), (10, 0.27, 3), (9, 0.3, 3)])
def test_test_split_is_the_rounded_share_and_train_the_rest(n, fraction, n_test):
    test, train = split_indices(n, "test", 3, fraction), split_indices(n, "train", 3, fraction)
    assert len(test) == n_test and len(train) == n - n_test
    assert sorted(np.concatenate([test, train]).tolist()) == list(range(n))
