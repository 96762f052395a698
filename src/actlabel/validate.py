"""Checked NumPy inputs of the statistics core (select.py, metrics.py, loss.py): each check raises
one ValueError that names the argument and, for a bad value, the index of the first one."""

from __future__ import annotations

import numpy as np


def prob_array(x: np.ndarray, name: str, n: int | None = None, *, any_shape: bool = False) -> np.ndarray:
    """`x` as floats, every one finite and in [0, 1]; 1-D (of length `n` when given) unless
    `any_shape`."""
    a = np.asarray(x, dtype=float)
    if not any_shape:
        _check_1d(a, name, n)
    bad = ~np.isfinite(a) | (a < 0.0) | (a > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(f"{name} must be in [0, 1]; got {a.ravel()[i].item()!r} at index {i}")
    return a


def bool_array(x: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    """`x` as a 1-D boolean array (of length `n` when given); the numbers 0 and 1 are accepted."""
    a = np.asarray(x)
    _check_1d(a, name, n)
    if a.dtype != bool:
        ok = np.isin(a, (0, 1))
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"{name} must be boolean or 0/1; got {a[i].item()!r} at index {i}")
        a = a.astype(bool)
    return a


def _check_1d(a: np.ndarray, name: str, n: int | None) -> None:
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
