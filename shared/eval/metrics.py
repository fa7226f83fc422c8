"""Ranking metrics of the papers hashrec reproduces, all in percent.

Every function takes ``ranked``: per example, predicted item ids best first, and ``truth``:
per example, the set of correct ids. Examples with an empty truth set are an error: no
metric here is defined for them, and the evaluation filters them out beforehand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Ranked = Sequence[Sequence[int]] | np.ndarray
Truth = Sequence[set[int] | frozenset[int]]


def _checked(ranked: Ranked, truth: Truth, k: int) -> list[tuple[list[int], set[int]]]:
    if len(ranked) != len(truth):
        raise ValueError(f"{len(ranked)} rankings but {len(truth)} truth sets")
    if not len(truth):
        raise ValueError("no examples to score")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    pairs = []
    for position, (row, gold) in enumerate(zip(ranked, truth, strict=True)):
        if not gold:
            raise ValueError(f"example {position} has no ground-truth item")
        pairs.append(([int(item) for item in row[:k]], set(gold)))
    return pairs


def overall_precision_recall_f1(ranked: Ranked, truth: Truth, k: int = 3) -> dict[str, float]:
    """O-P, O-R, O-F1 over the top k (Zhong et al. §3.3, after Wang et al.'s CNN-RNN).

    O-P = Σ_i |top_k(i) ∩ Y_i| / Σ_i |top_k(i)|,  O-R = Σ_i |top_k(i) ∩ Y_i| / Σ_i |Y_i|,
    O-F1 = 2·O-P·O-R / (O-P + O-R): counts pooled over all test examples.
    """
    pairs = _checked(ranked, truth, k)
    hits = sum(len(set(top) & gold) for top, gold in pairs)
    predicted = sum(len(top) for top, _ in pairs)
    relevant = sum(len(gold) for _, gold in pairs)
    precision, recall = hits / predicted, hits / relevant
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"O-P": 100 * precision, "O-R": 100 * recall, "O-F1": 100 * f1}


def precision_at_k(ranked: Ranked, truth: Truth, k: int = 1) -> float:
    """Mean over examples of |top_k ∩ Y| / k (HARRISON's Precision@1 for k = 1)."""
    pairs = _checked(ranked, truth, k)
    return 100 * float(np.mean([len(set(top) & gold) / k for top, gold in pairs]))


def recall_at_k(ranked: Ranked, truth: Truth, k: int = 5) -> float:
    """Mean over examples of |top_k ∩ Y| / |Y| (HARRISON's Recall@5)."""
    pairs = _checked(ranked, truth, k)
    return 100 * float(np.mean([len(set(top) & gold) / len(gold) for top, gold in pairs]))


def accuracy_at_k(ranked: Ranked, truth: Truth, k: int = 5) -> float:
    """Share of examples with at least one correct item in the top k (HARRISON A@5, Veit A@k)."""
    pairs = _checked(ranked, truth, k)
    return 100 * float(np.mean([bool(set(top) & gold) for top, gold in pairs]))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores of each row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    # argpartition then a stable sort of the k survivors: O(n) instead of a full sort.
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    ranked = np.take_along_axis(part, order, axis=1)
    # argpartition keeps an arbitrary member of a tie at the cut: where the k-th score has
    # a twin outside the top k, rank that row by a full stable sort instead.
    kth = np.take_along_axis(scores, ranked[:, -1:], axis=1)
    tied = (scores >= kth).sum(axis=1) > k
    if tied.any():
        ranked[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
    return ranked


def set_similarity(ranked: Ranked, truth: Truth, vectors: np.ndarray, k: int = 5,
                   ) -> dict[str, float]:
    """InstaHash's own measure (Ray et al. §4, Tables 1–2): per example, the cosine of the
    mean word vector of the top k to the mean vector of the true items (``vectors``: one row
    per item id, from a Word2Vec model trained on the training hashtags), and the Jaccard
    overlap of the two sets. The cosine is gensim's ``n_similarity``, which the paper's
    Word2Vec model offers (means of the raw vectors). Returns the mean cosine, the share
    of examples with cosine > 0, > 0.3 ("good") and > 0.7 ("great"), and the mean
    Jaccard, all in percent except the mean cosine."""
    pairs = _checked(ranked, truth, k)
    cosines, jaccards = [], []
    for top, gold in pairs:
        a, b = vectors[top].mean(axis=0), vectors[sorted(gold)].mean(axis=0)
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosines.append(float(a @ b) / norms if norms > 0 else 0.0)
        jaccards.append(len(set(top) & gold) / len(set(top) | gold))
    cosine = np.array(cosines)
    return {"cos": float(cosine.mean()), "cos>0": 100 * float((cosine > 0).mean()),
            "cos>0.3": 100 * float((cosine > 0.3).mean()),
            "cos>0.7": 100 * float((cosine > 0.7).mean()),
            "Jaccard": 100 * float(np.mean(jaccards))}
