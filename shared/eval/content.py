"""A post's content as one feature vector for the user models: its photo's CNN features, or
its text's embedding. The user model is content-agnostic (Veit et al.'s f can be any
vector), so text posts by real users (#HowYouTagTweets) measure what knowing the user adds.

Encoders of text: ``minilm`` (all-MiniLM-L6-v2, shared/text.py, cached per text) and
``tfidf`` (TF-IDF over the training texts, reduced to ``TFIDF_DIM`` dense dimensions by a
truncated SVD, i.e. LSA; fit on the training posts alone).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.data.readers import Post

log = logging.getLogger(__name__)

ENCODERS = ("minilm", "e5", "tfidf")
TFIDF_DIM = 256


def text_features(train: Sequence[Post], test: Sequence[Post], encoder: str,
                  cache_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Post id → L2-normalised text vector for every post with text; the TF-IDF encoder
    learns its vocabulary and SVD from ``train`` alone."""
    posts = [p for p in (*train, *test) if p.text]
    if encoder in ("minilm", "e5"):
        from shared.text import TextStore

        vectors = TextStore(cache_dir, name=encoder).encode([p.text for p in posts])
    elif encoder == "tfidf":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
        train_matrix = vectorizer.fit_transform([p.text for p in train if p.text])
        svd = TruncatedSVD(min(TFIDF_DIM, train_matrix.shape[1] - 1), random_state=seed)
        svd.fit(train_matrix)
        vectors = svd.transform(vectorizer.transform([p.text for p in posts]))
        log.info("tfidf: %d terms, SVD to %d dimensions keeps %.1f %% of the variance",
                 train_matrix.shape[1], svd.n_components,
                 100 * svd.explained_variance_ratio_.sum())
    else:
        raise ValueError(f"unknown text encoder {encoder!r}; choose one of "
                         f"{', '.join(ENCODERS)}")
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return {p.id: row for p, row in zip(posts, vectors, strict=True)}


def knn_vote_scores(train: np.ndarray, train_hashtags: Sequence[Sequence[int]],
                    test: np.ndarray | None, n_hashtags: int, k: int = 50,
                    chunk: int = 1024) -> np.ndarray:
    """Each test row's k most cosine-similar training rows vote for their hashtags, each
    vote weighted by the similarity (negative similarities vote nothing). ``test`` None:
    every training row votes on, never for itself (leave one out)."""
    leave_one_out = test is None
    test = train if test is None else test
    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
                ).astype(np.float32)

    train_unit, test_unit = unit(train), unit(test)
    k = min(k, len(train_unit) - int(leave_one_out))
    rows = np.repeat(np.arange(len(train_hashtags)), [len(ids) for ids in train_hashtags])
    cols = np.fromiter((h for ids in train_hashtags for h in ids), dtype=np.int64)
    from scipy.sparse import csr_matrix

    membership = csr_matrix((np.ones(len(cols), np.float32), (rows, cols)),
                            shape=(len(train_hashtags), n_hashtags))
    scores = np.zeros((len(test_unit), n_hashtags), dtype=np.float32)
    for start in range(0, len(test_unit), chunk):
        similarity = test_unit[start:start + chunk] @ train_unit.T
        if leave_one_out:
            own = np.arange(start, start + len(similarity))
            similarity[own - start, own] = -np.inf
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.zeros_like(similarity)
        np.put_along_axis(weights, nearest, np.maximum(
            np.take_along_axis(similarity, nearest, axis=1), 0), axis=1)
        scores[start:start + chunk] = np.asarray(membership.T.dot(weights.T).T)
    return scores


def as_distribution(scores: np.ndarray) -> np.ndarray:
    """Rows of non-negative scores scaled to sum to 1 (all-zero rows stay zero)."""
    totals = scores.sum(axis=1, keepdims=True)
    return np.divide(scores, totals, out=np.zeros_like(scores, dtype=np.float64),
                     where=totals > 0)
