"""What the photo-level methods share: photos as features + machine labels + hashtags."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy import sparse

from shared.config import data_root
from shared.data.normalize import normalize_hashtag

MACHINE_LABELS_PER_PHOTO = 5


@dataclass(frozen=True, eq=False)
class PhotoSet:
    """n photos: CNN features, ImageNet class probabilities, and (for training photos) the
    vocabulary ids of their hashtags and the community (photo set) each was posted in."""

    features: np.ndarray  # (n, 1280) float32
    probabilities: np.ndarray  # (n, 1000) float32
    hashtags: Sequence[Sequence[int]] = ()
    communities: np.ndarray | None = None  # (n,) int: index into the training's communities
    keys: Sequence[str] = ()  # each photo's photo_key, where known
    #: (n, communities): what the request knows of each photo's community (the one it
    #: named, one-hot; where its poster posts): a gated method multiplies the gate's guess
    #: by it (GatedMethod.mix); a row of NaN: the gate's guess alone
    community_weights: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)

    @classmethod
    def joined(cls, photos: Sequence[PhotoSet]) -> PhotoSet:
        """The features, machine labels and known community mixes of several photo sets as
        one (a batch)."""
        known = [p.community_weights for p in photos if p.community_weights is not None]
        weights = None
        if known:
            width = known[0].shape[1]
            if any(w.shape[1] != width for w in known):
                raise ValueError("photos of one batch give community mixes of different "
                                 "lengths")
            weights = np.concatenate([
                p.community_weights if p.community_weights is not None
                else np.full((len(p), width), np.nan, np.float32) for p in photos])
        return cls(np.concatenate([p.features for p in photos]),
                   np.concatenate([p.probabilities for p in photos]),
                   community_weights=weights)

    def subset(self, rows: np.ndarray) -> PhotoSet:
        return PhotoSet(self.features[rows], self.probabilities[rows],
                        [self.hashtags[i] for i in rows] if self.hashtags else (),
                        None if self.communities is None else self.communities[rows],
                        [self.keys[i] for i in rows] if self.keys else (),
                        None if self.community_weights is None
                        else self.community_weights[rows])

    def routed(self, weights: np.ndarray | None) -> PhotoSet:
        """These photos with the community mix ``weights`` (one row, or one a photo)."""
        if weights is None:
            return self
        return dataclasses.replace(self, community_weights=np.broadcast_to(
            np.asarray(weights, np.float32), (len(self), np.shape(weights)[-1])).copy())


def photo_key(path: Path) -> str:
    """A photo's name across artifacts and machines: its path under the data root (the
    same photo read from another checkout has the same key), else the path as given."""
    root = data_root().resolve()
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


@cache
def label_terms(class_names: tuple[str, ...]) -> tuple[str, ...]:
    """ImageNet class names spelled as hashtags ("golden retriever" → "goldenretriever"), so
    a machine label and the hashtag people write for it are one term."""
    return tuple(normalize_hashtag(name) or f"class{index}"
                 for index, name in enumerate(class_names))


def machine_labels(probabilities: np.ndarray, class_names: tuple[str, ...],
                   k: int = MACHINE_LABELS_PER_PHOTO) -> list[list[tuple[str, float]]]:
    """The k most probable classes of each photo as (term, probability), best first."""
    terms = label_terms(class_names)
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [[(terms[c], float(row[c])) for c in classes]
            for row, classes in zip(probabilities, order, strict=True)]


def log_prior(hashtags: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """log P(h), add-one smoothed over the training photos."""
    counts = np.bincount([i for ids in hashtags for i in ids], minlength=vocab_size)
    return np.log((counts + 1.0) / (len(hashtags) + vocab_size)).astype(np.float32)


def pmi_scores(queries: np.ndarray, hashtag_context: np.ndarray,
               prior: np.ndarray) -> np.ndarray:
    """exp(log P(h) + q · c_h − max): with skip-gram's negative sampling, w_l · c_h estimates
    PMI(l, h) = log P(h | l) − log P(h), so adding log P(h) ranks by P(h | l). Rows scaled to
    a maximum of 1."""
    logits = queries @ hashtag_context.T + prior
    return np.exp(logits - logits.max(axis=1, keepdims=True))


def label_weights(photo_labels: Sequence[tuple[str, float]], index: dict[str, int],
                  ) -> list[tuple[int, float]]:
    """The photo's known machine labels with their probabilities renormalised to sum 1."""
    known = [(index[term], p) for term, p in photo_labels if term in index]
    total = sum(p for _, p in known)
    return [(row, p / total) for row, p in known] if total > 0 else []


def sparse_hashtag_matrix(hashtags: Sequence[Sequence[int]], vocab_size: int,
                          ) -> sparse.csr_matrix:
    """Photos × hashtags, 1 where the photo carries the hashtag: a photo has ~10 of
    ~1,500, so 80 B a photo where the dense rows took 6 KB."""
    bounds = np.zeros(len(hashtags) + 1, np.int64)
    bounds[1:] = np.cumsum([len(set(ids)) for ids in hashtags])
    ids = np.fromiter((i for row in hashtags for i in sorted(set(row))), np.int32,
                      int(bounds[-1]))
    return sparse.csr_matrix((np.ones(len(ids), np.float32), ids, bounds),
                             shape=(len(hashtags), vocab_size))


def hashtag_votes(weights: np.ndarray, ids: np.ndarray,
                  tags: sparse.csr_matrix) -> np.ndarray:
    """Σ_j w_j · tags_j for each query: its neighbours' hashtags (rows ``ids`` of the
    photos × hashtags ``tags``; -1: no neighbour) each adding the neighbour's weight,
    (queries × hashtags). Each neighbour's hashtag ids are a slice of the CSR's, gathered
    and counted in one bincount."""
    found = ids >= 0  # FAISS pads with -1 when it finds fewer than k
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])[found.ravel()]
    bounds, tag_ids = tags.indptr, tags.indices
    starts, lengths = bounds[ids[found]], np.diff(bounds)[ids[found]]
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    picked = tag_ids[offsets + np.arange(lengths.sum())]
    n_hashtags = tags.shape[1]
    return np.bincount(np.repeat(rows, lengths) * n_hashtags + picked,
                       weights=np.repeat(weights[found], lengths),
                       minlength=len(ids) * n_hashtags
                       ).reshape(len(ids), n_hashtags).astype(np.float32)
