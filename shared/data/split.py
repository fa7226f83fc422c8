"""Seeded splits of a data set into training and test posts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def seeded_split(items: Sequence[T], seed: int, test_share: float = 0.2,
                 ) -> tuple[list[T], list[T]]:
    """A random (train, test) partition; the same seed always gives the same partition."""
    if not 0 < test_share < 1:
        raise ValueError(f"test share must lie strictly between 0 and 1, got {test_share}")
    order = np.random.default_rng(seed).permutation(len(items))
    cut = len(items) - round(test_share * len(items))
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]


def fit_sample(n: int, seed: int) -> np.ndarray:
    """The rows (ascending) of n that the fits on a sample use (the fusions, the gate):
    every one up to $HASHREC_FIT_SAMPLE, else that many, drawn with ``seed``."""
    from shared.config import fit_sample_limit

    limit = fit_sample_limit()
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
