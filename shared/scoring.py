"""What every scoring service shares: a photo as VisionService described it, checked and
turned into the PhotoSet the models read, and one servicer for "score the vocabulary".

Transport-side glue (protobuf ↔ numpy); the math stays in each service's model.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache

import grpc
import numpy as np
from hashrec.v1 import photo_pb2, vision_pb2

from shared.admission import abort_overloaded
from shared.backbone import FEATURE_DIM, N_CLASSES, class_names, vision_model_id
from shared.batching import Batcher, NumericWorker, OverloadedError
from shared.photos import PhotoSet

log = logging.getLogger(__name__)


@cache
def class_rows() -> dict[str, int]:
    """ImageNet class name → output row, built once (not on every request)."""
    return {name: row for row, name in enumerate(class_names())}


def describe(reply: vision_pb2.EmbedResponse) -> photo_pb2.PhotoDescription:
    """VisionService's answer as the description the scorers take."""
    return photo_pb2.PhotoDescription(features=reply.features, labels=reply.labels,
                                      vision_model_version=reply.model_version)


def photo_set(photo: photo_pb2.PhotoDescription) -> PhotoSet:
    """The photo as the methods see it. Only the top machine labels travel; the methods use
    no more than those (MACHINE_LABELS_PER_PHOTO), so the rest of the distribution is 0.
    ValueError, naming what is wrong, for anything a vision model of ours cannot have sent.
    """
    if len(photo.features) != FEATURE_DIM:
        raise ValueError(f"photo.features must hold {FEATURE_DIM} values, got "
                         f"{len(photo.features)}")
    if photo.vision_model_version and photo.vision_model_version != vision_model_id():
        raise ValueError(f"features of vision model {photo.vision_model_version!r}; this "
                         f"model was trained on {vision_model_id()!r}")
    features = np.asarray(photo.features, dtype=np.float32)
    if not np.isfinite(features).all():
        raise ValueError("photo.features contain NaN or infinity")
    index = class_rows()
    probabilities = np.zeros((1, N_CLASSES), dtype=np.float32)
    for label in photo.labels:
        if label.name not in index:
            raise ValueError(f"unknown machine label {label.name!r}")
        if not 0.0 <= label.probability <= 1.0:
            raise ValueError(f"label {label.name!r} has probability {label.probability}, "
                             "not in [0, 1]")
        probabilities[0, index[label.name]] = label.probability
    return PhotoSet(features[None, :], probabilities)


def checked_community_weights(weights: Sequence[float], communities: int) -> np.ndarray | None:
    """ScoreRequest.community_weights as a mix summing to 1 (None when empty), checked
    against the model's number of communities; ValueError naming what is wrong."""
    if not len(weights):
        return None
    if communities < 2:
        raise ValueError("community_weights given for a model of one community")
    if len(weights) != communities:
        raise ValueError(f"community_weights holds {len(weights)} weights; the model has "
                         f"{communities} communities")
    mix = np.asarray(weights, dtype=np.float32)
    if not np.isfinite(mix).all() or (mix < 0).any() or mix.sum() <= 0:
        raise ValueError("community_weights must be finite, non-negative and not all 0")
    return mix / mix.sum()


async def photo_or_abort(photo: photo_pb2.PhotoDescription,
                         context: grpc.aio.ServicerContext,
                         community_weights: Sequence[float] = (),
                         communities: int = 1) -> PhotoSet:
    """The photo as the methods see it, routed by ``community_weights`` when given."""
    try:
        return photo_set(photo).routed(checked_community_weights(community_weights, communities))
    except ValueError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        raise  # abort raises; this line only satisfies the type checker


#: which service scores which photo → hashtag methods; the recommender runs the rest
WORD_METHODS = ("word", "semantic", "autorec", "autorec_masked", "instahash")
GRAPH_METHODS = ("graph",)


class VocabularyScorer:
    """``Score(ScoreRequest) → VocabularyScores`` for the photo → hashtag methods one
    service holds: the RPC of WordEmbeddingService and GraphEmbeddingService. A method
    with ``scores_all`` and ``extra`` (the semantic method) also scores hashtags outside
    the vocabulary.

    The photos of concurrent calls are scored as one batch (shared/batching.py): each
    method, and each community's method inside it, runs once a batch, never once a call,
    on the service's one numeric worker thread, so the event loop keeps answering health
    checks. A full queue answers RESOURCE_EXHAUSTED with a retry hint."""

    def __init__(self, methods: dict[str, object], model_version: str,
                 previous: VocabularyScorer | None = None) -> None:
        """``previous``: the scorer this one replaces in a rollout, kept (without its own
        previous) for callers still on its version; its worker is shared. No ``methods``
        (a model trained without this service's): it serves, and Score says so, so the
        stack serves such a model (the recommender does not ask) and a later version
        with them is rolled out as any other."""
        self.methods, self.model_version = methods, model_version
        if previous is not None and previous.previous is not None:
            previous.previous.batcher.stop()  # two versions at most stay in memory
            previous.previous = None
        self.previous = previous
        self.worker = previous.worker if previous is not None else NumericWorker("score")
        #: the communities the methods' gates mix (1: no gate)
        self.communities = max((len(method.gate.bias) for method in methods.values()
                                if getattr(method, "gate", None) is not None), default=1)
        #: each method's hashtags outside the vocabulary (the semantic method's), once
        self.extra = {name: tuple(getattr(method, "extra", ()))
                      for name, method in methods.items() if hasattr(method, "scores_all")}
        self.batcher: Batcher[tuple[PhotoSet, bool], list[photo_pb2.MethodScores]] = Batcher(
            f"scoring ({model_version})", self._score_batch, self.worker)

    def stop(self) -> None:
        """Ends the batches, of this version and the one it replaced, and the worker."""
        self.batcher.stop()
        if self.previous is not None:
            self.previous.batcher.stop()
        self.worker.stop()

    def _score_batch(self, calls: list[tuple[PhotoSet, bool]],
                     ) -> list[list[photo_pb2.MethodScores]]:
        """Each call's scores: (photo, whether the caller knows the outside hashtags)."""
        batch = PhotoSet.joined([photo for photo, _ in calls])
        answers: list[list[photo_pb2.MethodScores]] = [[] for _ in calls]
        for name, method in self.methods.items():
            extra = self.extra.get(name)
            if extra:  # the semantic method
                every = method.scores_all(batch)
                inside = every.shape[1] - len(extra)
                for row, answer in enumerate(answers):
                    answer.append(photo_pb2.MethodScores(
                        method=name, scores=every[row, :inside].tolist(),
                        outside_hashtags=() if calls[row][1] else extra,
                        outside_scores=every[row, inside:].tolist()))
            else:
                scores = method.scores(batch)
                for row, answer in enumerate(answers):
                    answer.append(photo_pb2.MethodScores(method=name,
                                                         scores=scores[row].tolist()))
        return answers

    async def Score(self, request: photo_pb2.ScoreRequest,  # noqa: N802
                    context: grpc.aio.ServicerContext) -> photo_pb2.VocabularyScores:
        scorer = self
        if self.previous is not None and request.model_version == self.previous.model_version:
            scorer = self.previous
        if not scorer.methods:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"model {scorer.model_version} holds none of the methods "
                                "this service scores")
        photos = await photo_or_abort(request.photo, context, request.community_weights,
                                      self.communities)
        try:
            methods = await scorer.batcher.submit((photos, request.outside_hashtags_known))
        except OverloadedError as error:
            await abort_overloaded(context, error)
        return photo_pb2.VocabularyScores(methods=methods, model_version=scorer.model_version)
