"""The logistic function, its inverse and the two-sided normal quantile, defined once.

Pure (NumPy and the standard library), so the statistical cores (select.py, metrics.py) and the
critics share them without importing anything of the I/O layers.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

#: how far from 0 and 1 a probability is clipped before its logit, so certainty stays finite
LOGIT_EPS = 1e-4


def logit(p: np.ndarray | float, eps: float = LOGIT_EPS) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """1 / (1 + exp(-x)), in the tanh form: no overflow warnings for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def two_sided_z(confidence: float) -> float:
    """z with P(|Z| <= z) = confidence for a standard normal Z (1.96 at 0.95)."""
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)
