"""Helpers that draw pools and few-shot examples from the offline datasets."""

from __future__ import annotations

import numpy as np

from actlabel.datasets import first_per_label


def test_first_per_label_keeps_the_draw_order_and_at_most_k_of_each_label() -> None:
    labels = ["a", "b", "a", "c", "a", "b", "b"]
    idx = np.array([6, 0, 2, 1, 4, 3, 5])
    assert first_per_label(labels, idx, 2) == [6, 0, 2, 1, 3]
    assert first_per_label(labels, idx, 1) == [6, 0, 3]
    assert first_per_label(labels, np.array([], dtype=int), 3) == []
