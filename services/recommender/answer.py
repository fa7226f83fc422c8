"""From a photo's evidence to the answer: the fusion, the user's part, the top k with the
signals behind each hashtag, for a batch of requests at once (the recommender's numeric
worker runs it; server.py stays transport). Also how a photo's evidence is laid out in the
cache, so that a photo seen before costs one read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from hashrec.v1 import photo_pb2, recommender_pb2

from services.image_models import ImageModels
from services.recommender.model import Fusion, normalized_rows, outside_candidates
from services.recommender.user_side import condition_on_user
from shared.backbone import FEATURE_DIM, vision_model_id
from shared.eval.metrics import top_k

#: how deep a method's ranking a signal reaches: a hashtag carries the signal of every
#: method that ranks it among its top SIGNAL_DEPTH
SIGNAL_DEPTH = 20


@dataclass
class PhotoScores:
    """One photo's evidence: as vision described it, every photo method's scores over the
    vocabulary, the hashtags outside the vocabulary a method scored (term → its score,
    per method), the fused scores once known, and what could not contribute."""

    description: photo_pb2.PhotoDescription
    per_method: dict[str, np.ndarray]
    outside: dict[str, tuple[tuple[str, ...], np.ndarray]]
    reasons: list[str]
    fused: np.ndarray | None = None
    #: the community the request named: that community's own learned fusion ranks
    community: str = ""


@dataclass(frozen=True)
class Prepared:
    """The part of every answer for a photo that no user changes (``Answers.prepare``):
    its description, fused scores, the outside hashtags placed on the fused scale, the
    methods' signals by hashtag ((method, normalised score, rank) each), and what could
    not contribute. Small enough to keep in memory for the photos seen lately."""

    description: photo_pb2.PhotoDescription
    fused: np.ndarray
    outside_terms: tuple[str, ...]
    outside_scores: np.ndarray
    signals: dict[str, list[tuple[str, float, int]]]
    reasons: tuple[str, ...]


@dataclass
class Request:
    """What the finishing batch needs of one Recommend call: the photo's evidence, or
    what was prepared of it before."""

    photo: PhotoScores | None
    k: int
    prepared: Prepared | None = None
    user_hashtags: list[tuple[str, float]] = field(default_factory=list)
    user_weight: float = 1.0
    reasons: list[str] = field(default_factory=list)  # the user's part's


class Answers:
    """The answers of a batch of requests over one model version."""

    def __init__(self, models: ImageModels, photo_methods: Sequence[str],
                 outside_terms: dict[str, tuple[str, ...]]) -> None:
        """``photo_methods``: the methods a complete answer holds, in cache order;
        ``outside_terms``: each method's hashtags outside the vocabulary, as learned from
        its answers (shared with the servicer, which fills it)."""
        self.models, self.photo_methods = models, tuple(photo_methods)
        self.outside_terms = outside_terms
        self.vocabulary_index = {term: row for row, term in enumerate(models.vocabulary)}

    # The cache layout: features, each method's scores (vocabulary, then its outside
    # hashtags) in ``photo_methods`` order, then the fused scores.
    def _sizes(self) -> list[int]:
        vocabulary = len(self.models.vocabulary)
        return [vocabulary + len(self.outside_terms.get(m, ())) for m in self.photo_methods]

    def to_cache(self, photo: PhotoScores) -> np.ndarray:
        parts = [np.asarray(photo.description.features, dtype=np.float32)]
        for method in self.photo_methods:
            parts.append(photo.per_method[method])
            if method in photo.outside:
                parts.append(photo.outside[method][1])
        parts.append(photo.fused)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def from_cache(self, cached: np.ndarray | None) -> PhotoScores | None:
        """The evidence ``to_cache`` laid out, or None when ``cached`` is missing or not of
        this layout (another model's, or written before a method's outside terms were
        known)."""
        vocabulary = len(self.models.vocabulary)
        sizes = self._sizes()
        if cached is None or len(cached) != FEATURE_DIM + sum(sizes) + vocabulary:
            return None
        per_method, outside, start = {}, {}, FEATURE_DIM
        for method, size in zip(self.photo_methods, sizes, strict=True):
            scores = cached[start:start + size]
            start += size
            per_method[method] = scores[:vocabulary]
            if method in self.outside_terms:
                outside[method] = (self.outside_terms[method], scores[vocabulary:])
        return PhotoScores(photo_pb2.PhotoDescription(
            features=cached[:FEATURE_DIM].tolist(), vision_model_version=vision_model_id()),
            per_method, outside, [], cached[start:])

    def complete(self, photo: PhotoScores) -> bool:
        """Whether every photo method answered (what may be cached)."""
        return not photo.reasons and set(photo.per_method) == set(self.photo_methods)

    def fuse(self, photos: Sequence[PhotoScores]) -> None:
        """Fills ``fused`` where it is missing: one fusion per set of methods that
        answered (a batch's complete photos share one learned-fusion call)."""
        groups: dict[tuple[tuple[str, ...], str], list[PhotoScores]] = {}
        for photo in photos:
            if photo.fused is None:
                groups.setdefault((tuple(sorted(photo.per_method)), photo.community),
                                  []).append(photo)
        for (methods, community), group in groups.items():
            rows = {m: np.stack([p.per_method[m] for p in group]) for m in methods}
            try:
                fused = self.models.combine(rows, community)
            except ValueError:  # no method with a fusion weight answered: equal weights
                fused = Fusion({m: 1.0 for m in rows}).combine(rows)
                for photo in group:
                    photo.reasons.append("fusion: no weighted method answered; equal "
                                         "weights")
            for photo, row in zip(group, fused, strict=True):
                photo.fused = row.astype(np.float32, copy=False)

    def prepare(self, photo: PhotoScores) -> Prepared:
        """What every answer for this photo shares, whoever asks: the hashtags from
        outside the vocabulary placed on the fused scale, and each method's top
        SIGNAL_DEPTH as signals. Computed once a photo; a user's answer adds only the
        user's part."""
        outside_terms, outside_scores = outside_candidates(
            photo.per_method, photo.outside, photo.fused, self.vocabulary_index)
        signals: dict[str, list[tuple[str, float, int]]] = {}
        methods = list(photo.per_method)
        every = {m: np.concatenate([photo.per_method[m], photo.outside[m][1]])
                 if m in photo.outside else photo.per_method[m] for m in methods}
        for method in methods:
            names = self.models.vocabulary if method not in photo.outside else (
                *self.models.vocabulary, *photo.outside[method][0])
            row = every[method][None, :]
            normalized = normalized_rows(row)[0]
            for rank, h in enumerate(top_k(row, SIGNAL_DEPTH)[0].tolist(), start=1):
                signals.setdefault(names[h], []).append((method, float(normalized[h]), rank))
        return Prepared(photo.description, photo.fused, outside_terms, outside_scores,
                        signals, tuple(photo.reasons))

    def answer(self, requests: Sequence[Request]) -> list[recommender_pb2.RecommendResponse]:
        """The batch's answers, in order; each request's ``prepared`` filled in."""
        self.fuse([r.photo for r in requests if r.prepared is None])
        for request in requests:
            if request.prepared is None:
                request.prepared = self.prepare(request.photo)
        return [self._answer(request) for request in requests]

    def _answer(self, request: Request) -> recommender_pb2.RecommendResponse:
        photo = request.prepared
        fused = photo.fused
        index = {**self.vocabulary_index,
                 **{t: len(fused) + i for i, t in enumerate(photo.outside_terms)}}
        combined, user_terms = condition_on_user(
            index, np.concatenate([fused, photo.outside_scores]), request.user_hashtags,
            request.user_weight)
        terms = (*self.models.vocabulary, *photo.outside_terms, *user_terms)
        reasons = [*photo.reasons, *request.reasons]
        return recommender_pb2.RecommendResponse(
            hashtags=self._top(combined, terms, photo, request.user_hashtags, request.k),
            model_version=self.models.version, degraded=bool(reasons),
            degraded_reasons=reasons)

    def _top(self, combined: np.ndarray, terms: tuple[str, ...], photo: Prepared,
             user_hashtags: list[tuple[str, float]], k: int,
             ) -> list[recommender_pb2.HashtagScore]:
        """The top k of ``combined`` (over ``terms``: the vocabulary, then hashtags from
        outside it), each with the signals of the methods that rank it among their top
        SIGNAL_DEPTH."""
        vocabulary = len(self.models.vocabulary)
        answer = top_k(combined[None, :], k)[0].tolist()
        users = {term: (relative, rank) for rank, (term, relative) in
                 enumerate(user_hashtags[:SIGNAL_DEPTH], start=1)}
        hashtags = []
        for i in answer:
            term = terms[i]
            signals = [recommender_pb2.Signal(method=method, score=score, rank=rank)
                       for method, score, rank in photo.signals.get(term, ())]
            if term in users:
                relative, rank = users[term]
                signals.append(recommender_pb2.Signal(method="user", score=relative,
                                                      rank=rank))
            hashtags.append(recommender_pb2.HashtagScore(
                hashtag=term, score=float(combined[i]), outside_vocabulary=i >= vocabulary,
                signals=sorted(signals, key=lambda s: (s.rank, s.method))))
        return hashtags
