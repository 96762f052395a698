from __future__ import annotations

import numpy as np
import pytest

from actlabel.validate import bool_array, prob_array


def test_prob_array_names_the_argument_and_the_first_bad_index() -> None:
    assert prob_array([0, 0.5, 1], "p").dtype == float
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]; got nan at index 1"):
        prob_array([0.1, float("nan"), 2.0], "p")
    with pytest.raises(ValueError, match=r"p must be a 1-D array, got shape \(1, 2\)"):
        prob_array([[0.1, 0.2]], "p")
    with pytest.raises(ValueError, match=r"p must have shape \(3,\), got \(2,\)"):
        prob_array([0.1, 0.2], "p", 3)
    # any_shape: the values are checked, the index counts the flattened array
    assert prob_array([[0.1, 0.2]], "p", any_shape=True).shape == (1, 2)
    with pytest.raises(ValueError, match=r"got 1.5 at index 3"):
        prob_array([[0.1, 0.2], [0.3, 1.5]], "p", any_shape=True)


def test_bool_array_takes_booleans_and_0_1_only() -> None:
    assert bool_array(np.array([0, 1, 1]), "d").tolist() == [False, True, True]
    assert bool_array([True, False], "d", 2).dtype == bool
    with pytest.raises(ValueError, match="d must be boolean or 0/1; got 2 at index 1"):
        bool_array([1, 2], "d")
    with pytest.raises(ValueError, match=r"d must have shape \(3,\), got \(2,\)"):
        bool_array([1, 0], "d", 3)
