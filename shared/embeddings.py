"""Named vectors (hashtags, labels, graph nodes) stored as plain arrays, never pickles."""

from __future__ import annotations

import hashlib
import json
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

    def save(self, directory: Path, name: str) -> dict[str, str]:
        """Writes NAME.npy and NAME.terms.json; returns their sha256 for a manifest."""
        directory.mkdir(parents=True, exist_ok=True)
        vectors_path, terms_path = directory / f"{name}.npy", directory / f"{name}.terms.json"
        np.save(vectors_path, np.ascontiguousarray(self.vectors, dtype=np.float32),
                allow_pickle=False)
        terms_path.write_text(json.dumps(list(self.terms), ensure_ascii=False))
        return {path.name: sha256_file(path) for path in (vectors_path, terms_path)}

    @classmethod
    def load(cls, directory: Path, name: str,
             checksums: dict[str, str] | None = None) -> TermVectors:
        """Loads without pickle; with ``checksums`` (from a manifest) verifies them first."""
        vectors_path, terms_path = directory / f"{name}.npy", directory / f"{name}.terms.json"
        for path in (vectors_path, terms_path):
            if checksums is not None and sha256_file(path) != checksums.get(path.name):
                raise ValueError(f"{path}: checksum does not match the manifest")
        terms = json.loads(terms_path.read_text())
        return cls(tuple(terms), np.load(vectors_path, allow_pickle=False))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
