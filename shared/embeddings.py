"""Named vectors (hashtags, labels, graph nodes); saved through shared/artifacts.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np


@dataclass(frozen=True, eq=False)
class TermVectors:
    """One vector per term; row i of ``vectors`` belongs to ``terms[i]``."""

    terms: tuple[str, ...]
    vectors: np.ndarray
    #: skip-gram's output (context) vectors where kept: vectors[a] · context[b] ≈ PMI(a, b)
    context: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.terms):
            raise ValueError(f"{len(self.terms)} terms but vectors of shape {self.vectors.shape}")
        if self.context is not None and self.context.shape != self.vectors.shape:
            raise ValueError(f"context vectors of shape {self.context.shape} do not match "
                             f"vectors of shape {self.vectors.shape}")

    @cached_property
    def index(self) -> dict[str, int]:
        return {term: row for row, term in enumerate(self.terms)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def mean_of(self, documents: Sequence[Iterable[str]]) -> np.ndarray:
        """Each document as the mean of its known terms' vectors (zeros when none is known)."""
        result = np.zeros((len(documents), self.dim), dtype=np.float32)
        index = self.index
        for row, document in enumerate(documents):
            rows = [index[term] for term in document if term in index]
            if rows:
                result[row] = self.vectors[rows].mean(axis=0)
        return result


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
