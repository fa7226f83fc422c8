"""Exact maximum-inner-product search with FAISS (nearest hashtags, nearest photos)."""

from __future__ import annotations

import faiss
import numpy as np


def l2_normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so inner product = cosine."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class InnerProductIndex:
    """Top-k rows of ``vectors`` by inner product with each query (a flat, exact index)."""

    def __init__(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"index needs a non-empty 2-D array, got shape {vectors.shape}")
        self.vectors = vectors
        self.dim = vectors.shape[1]
        self.size = len(vectors)
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (queries × min(k, size)), best first."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return self._index.search(queries, min(k, self.size))

    def add(self, vectors: np.ndarray) -> None:
        """Appends rows; their ids continue from ``size``."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index {self.dim}")
        self._index.add(vectors)
        self.vectors = np.vstack([self.vectors, vectors])
        self.size += len(vectors)
