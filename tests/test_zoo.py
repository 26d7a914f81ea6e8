"""Data shipped for the examples (lumijax.zoo)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from lumijax import zoo


def test_digit_folds_test_every_digit_once():
    folds = zoo.digits_folds(5, seed=2)
    reference = load_digits()
    assert [len(f.x_test) for f in folds] == [360, 360, 359, 359, 359]
    tested = np.concatenate([f.x_test for f in folds]).reshape(-1, 64) * 16.0
    # Every image of the set is some fold's test image, exactly once.
    order = np.lexsort(tested.T[::-1])
    want = np.lexsort(reference.data.T[::-1])
    np.testing.assert_array_equal(tested[order], reference.data[want])
    for fold in folds:
        assert len(fold.x_train) + len(fold.x_test) == 1797
        train_rows = {row.tobytes() for row in fold.x_train.reshape(len(fold.x_train), -1)}
        # The 1797 images are all distinct, so no test image may be a training one.
        assert not any(row.tobytes() in train_rows for row in fold.x_test.reshape(len(fold.x_test), -1))
        assert set(np.unique(fold.y_test)) == set(range(10))
    with pytest.raises(ValueError, match="at least 2"):
        zoo.digits_folds(1)
