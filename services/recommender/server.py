"""RecommenderService over gRPC: orchestration and transport; the math is in model.py.

Recommend:
1. VisionService.Embed (required: every method reads the photo's features and labels);
2. in parallel, each with its own deadline inside the caller's: the local methods
   (frequency, knn, mlp), WordEmbeddingService.Score, GraphEmbeddingService.Score, and
   UserProfileService.Score when a user id is given;
3. fusion of the photo methods that answered (model.py: Fusion), conditioned on the user
   when the user service knows them (model.py: condition_on_user);
4. the top k, each hashtag with its score and the signals (method, normalised score, rank).
A backend that is down, late, or serves another model version is left out, and the answer
says degraded, with the reasons; only vision is required. Complete photo-side results
(features and every photo method's scores) are cached by the image's sha256 and the model
version, so a photo seen before costs only the user call.

Config from the environment: HASHREC_RECOMMENDER_HOST (127.0.0.1),
HASHREC_RECOMMENDER_PORT (50050), HASHREC_RECOMMENDER_METRICS_PORT (9100),

HASHREC_MODEL_DIR (a `hashrec train` directory, or a folder of them: the newest),
HASHREC_VISION_TARGET (127.0.0.1:50051),
HASHREC_WORD_TARGET (:50052), HASHREC_GRAPH_TARGET (:50053), HASHREC_USER_TARGET (:50054)
(an empty target: that backend is not used), HASHREC_VISION_DEADLINE_S (10),
HASHREC_BACKEND_DEADLINE_S (2: word, graph, user), HASHREC_REDIS_URL (unset: in-process).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from hashrec.v1 import (
    graph_pb2_grpc,
    photo_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
    word_pb2_grpc,
)

from services.recommender.model import Fusion, condition_on_user, normalized_rows
from services.vision.model import FEATURE_DIM
from services.vision.store import MODEL_ID
from shared.artifacts import resolve_artifact
from shared.cache import Cache, LruCache, cache_key, make_cache
from shared.config import setup_logging
from shared.eval.metrics import top_k
from shared.grpc_server import CHANNEL_OPTIONS, GrpcServer, k_or_abort, start_loading
from shared.photos import MACHINE_LABELS_PER_PHOTO
from shared.scoring import describe, photo_set
from shared.train import KIND, ImageModels, load_image_models

log = logging.getLogger(__name__)
SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name
DEFAULT_PORT, DEFAULT_METRICS_PORT = "50050", "9100"
MAX_K = 100
SIGNAL_DEPTH = 20
#: the user model is asked for this many hashtags at least, so that its opinion of the
#: photo methods' candidates is known
USER_DEPTH = 50
LOCAL_METHODS = ("frequency", "knn", "mlp")


@dataclass
class Backends:
    """Stubs of the services the recommender calls; None: not used."""

    vision: vision_pb2_grpc.VisionServiceStub
    word: word_pb2_grpc.WordEmbeddingServiceStub | None = None
    graph: graph_pb2_grpc.GraphEmbeddingServiceStub | None = None
    user: user_pb2_grpc.UserProfileServiceStub | None = None
    vision_deadline: float = 10.0
    deadline: float = 2.0


def _timeout(limit: float, context: grpc.aio.ServicerContext) -> float:
    """The backend's own deadline, never past the caller's."""
    remaining = context.time_remaining()
    return min(limit, remaining) if remaining is not None else limit


def _reason(backend: str, error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{backend}: {error.code().name}: {error.details()}"
    return f"{backend}: {type(error).__name__}: {error}"


class RecommenderServicer:
    def __init__(self, models: ImageModels, backends: Backends,
                 cache: Cache | None = None) -> None:
        self.models, self.backends = models, backends
        self.cache = cache if cache is not None else LruCache()
        self.vocabulary_index = {term: row for row, term in enumerate(models.vocabulary)}
        #: the photo methods whose scores a complete answer holds, in a fixed order
        self.photo_methods = tuple(m for m in LOCAL_METHODS if m in models.methods) + tuple(
            name for name, stub in (("word", backends.word), ("graph", backends.graph))
            if stub is not None)

    async def _embed(self, image: bytes, context: grpc.aio.ServicerContext,
                     ) -> vision_pb2.EmbedResponse:
        try:
            return await self.backends.vision.Embed(
                vision_pb2.EmbedRequest(image=image, top_labels=MACHINE_LABELS_PER_PHOTO),
                timeout=_timeout(self.backends.vision_deadline, context))
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                await context.abort(code, error.details())
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"vision service: {code.name}: {error.details()}")
            raise

    async def _photo_scores(self, image: bytes, context: grpc.aio.ServicerContext,
                            ) -> tuple[photo_pb2.PhotoDescription, dict[str, np.ndarray],
                                       list[str]]:
        """(the photo as vision described it, each photo method's scores, what failed).
        Complete answers are cached by the image's sha256 and the model version, so a
        photo seen before costs neither vision nor the photo methods."""
        key = cache_key("photo_scores", self.models.version,
                        hashlib.sha256(image).hexdigest())
        cached = self.cache.get(key)
        if cached is not None and len(cached) == FEATURE_DIM + len(
                self.photo_methods) * len(self.models.vocabulary):
            rows = cached[FEATURE_DIM:].reshape(len(self.photo_methods), -1)
            return (photo_pb2.PhotoDescription(features=cached[:FEATURE_DIM].tolist(),
                                               vision_model_version=MODEL_ID),
                    dict(zip(self.photo_methods, rows, strict=True)), [])
        description = describe(await self._embed(image, context))
        photos = photo_set(description)
        loop, backends = asyncio.get_running_loop(), self.backends
        calls: dict[str, Awaitable] = {"local": loop.run_in_executor(
            None, lambda: {name: self.models.methods[name].scores(photos)[0]
                           for name in LOCAL_METHODS if name in self.models.methods})}
        timeout = _timeout(backends.deadline, context)
        score_request = photo_pb2.ScoreRequest(photo=description)
        if backends.word is not None:
            calls["word"] = backends.word.Score(score_request, timeout=timeout)
        if backends.graph is not None:
            calls["graph"] = backends.graph.Score(score_request, timeout=timeout)
        results = dict(zip(calls, await asyncio.gather(*calls.values(),
                                                       return_exceptions=True), strict=True))
        per_method: dict[str, np.ndarray] = {}
        reasons: list[str] = []
        for backend, result in results.items():
            if isinstance(result, BaseException):
                if backend == "local":
                    raise result
                reasons.append(_reason(backend, result))
            elif backend == "local":
                per_method.update(result)
            elif result.model_version != self.models.version:
                reasons.append(f"{backend}: serves model {result.model_version}, the "
                               f"recommender {self.models.version}")
            elif len(result.scores) != len(self.models.vocabulary):
                reasons.append(f"{backend}: {len(result.scores)} scores for "
                               f"{len(self.models.vocabulary)} hashtags")
            else:
                per_method[backend] = np.asarray(result.scores, dtype=np.float32)
        if not reasons and set(per_method) == set(self.photo_methods):
            self.cache.set(key, np.concatenate([photos.features[0],
                                                *(per_method[m] for m in self.photo_methods)]))
        return description, per_method, reasons

    async def _user_scores(self, description: photo_pb2.PhotoDescription, user_id: str,
                           k: int, context: grpc.aio.ServicerContext,
                           ) -> tuple[list[tuple[str, float]], list[str]]:
        """The user model's top hashtags with relative probabilities, for a known user."""
        if self.backends.user is None or not user_id:
            return [], []
        try:
            reply = await self.backends.user.Score(user_pb2.UserScoreRequest(
                photo=description, user_id=user_id, k=max(k, USER_DEPTH)),
                timeout=_timeout(self.backends.deadline, context))
        except grpc.aio.AioRpcError as error:
            return [], [_reason("user", error)]
        if not reply.known_user:
            return [], []
        return [(h.hashtag, h.relative_probability) for h in reply.hashtags], []

    async def Recommend(self, request: recommender_pb2.RecommendRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> recommender_pb2.RecommendResponse:
        k = await k_or_abort(request.k, MAX_K, context)
        description, per_method, reasons = await self._photo_scores(request.image, context)
        user_hashtags, user_reasons = await self._user_scores(description, request.user_id,
                                                              k, context)
        reasons += user_reasons
        rows = {m: s[None, :] for m, s in per_method.items()}
        try:
            fused = self.models.fusion.combine(rows)[0]
        except ValueError:  # no method with a fusion weight answered: equal weights
            fused = Fusion({m: 1.0 for m in rows}).combine(rows)[0]
            reasons.append("fusion: no weighted method answered; equal weights")
        combined, extra_terms = condition_on_user(self.vocabulary_index, fused,
                                                  user_hashtags)
        return recommender_pb2.RecommendResponse(
            hashtags=self._answer(combined, extra_terms, per_method, user_hashtags, k),
            model_version=self.models.version, degraded=bool(reasons),
            degraded_reasons=reasons)

    def _answer(self, combined: np.ndarray, extra_terms: list[str],
                per_method: dict[str, np.ndarray], user_hashtags: list[tuple[str, float]],
                k: int) -> list[recommender_pb2.HashtagScore]:
        """The top k of ``combined`` (vocabulary, then ``extra_terms``), each with the
        signals of the methods that rank it among their top SIGNAL_DEPTH."""
        terms = self.models.vocabulary
        answer = top_k(combined[None, :], k)[0]
        wanted = {int(i) for i in answer}
        signals: dict[int, list[recommender_pb2.Signal]] = {i: [] for i in wanted}
        for method, scores in per_method.items():
            normalized = normalized_rows(scores[None, :])[0]
            for rank, h in enumerate(top_k(scores[None, :], SIGNAL_DEPTH)[0], start=1):
                if int(h) in wanted:
                    signals[int(h)].append(recommender_pb2.Signal(
                        method=method, score=float(normalized[h]), rank=rank))
        extra_rows = {term: len(terms) + i for i, term in enumerate(extra_terms)}
        for rank, (term, relative) in enumerate(user_hashtags[:SIGNAL_DEPTH], start=1):
            row = self.vocabulary_index.get(term, extra_rows.get(term))
            if row in wanted:
                signals[row].append(
                    recommender_pb2.Signal(method="user", score=relative, rank=rank))
        return [recommender_pb2.HashtagScore(
            hashtag=terms[i] if i < len(terms) else extra_terms[i - len(terms)],
            score=float(combined[i]),
            signals=sorted(signals[int(i)], key=lambda s: (s.rank, s.method)))
            for i in answer]

    async def Feedback(self, request: recommender_pb2.FeedbackRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> user_pb2.UserUpdateResponse:
        if not request.user_id.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is empty")
        if not request.hashtags:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no hashtags given")
        if self.backends.user is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no user service configured")
        reply = await self._embed(request.image, context)
        try:
            return await self.backends.user.Update(user_pb2.UserUpdateRequest(
                user_id=request.user_id, photo=describe(reply), hashtags=request.hashtags,
                photo_id=reply.image_sha256 or hashlib.sha256(request.image).hexdigest()),
                timeout=_timeout(self.backends.deadline, context))
        except grpc.aio.AioRpcError as error:
            await self._forward_error("user service", error, context)
            raise

    async def Retrieve(self, request: user_pb2.RetrieveRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> user_pb2.RetrieveResponse:
        if self.backends.user is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no user service configured")
        try:
            return await self.backends.user.Retrieve(
                request, timeout=_timeout(self.backends.deadline, context))
        except grpc.aio.AioRpcError as error:
            await self._forward_error("user service", error, context)
            raise

    @staticmethod
    async def _forward_error(backend: str, error: grpc.aio.AioRpcError,
                             context: grpc.aio.ServicerContext) -> None:
        """The caller's own mistakes pass through; the backend's trouble is UNAVAILABLE."""
        code = error.code()
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            await context.abort(code, error.details())
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"{backend}: {code.name}: {error.details()}")


async def serve(host: str, port: int, model_dir: Path, vision_target: str,
                word_target: str | None = None, graph_target: str | None = None,
                user_target: str | None = None, metrics_port: int | None = None,
                vision_deadline: float = 10.0, backend_deadline: float = 2.0,
                cache: Cache | None = None) -> GrpcServer:
    """Starts NOT_SERVING, loads and verifies the models, connects the backends, then
    SERVING. A target left None is not used (its signal never appears)."""
    server, late = await start_loading(
        SERVICE_NAME, recommender_pb2_grpc.add_RecommenderServiceServicer_to_server,
        "recommender model", host, port, metrics_port)
    models = await asyncio.get_running_loop().run_in_executor(
        None, lambda: load_image_models(model_dir, LOCAL_METHODS))
    channels = []

    def channel(target: str | None) -> grpc.aio.Channel | None:
        if not target:
            return None
        channels.append(grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS))
        return channels[-1]

    vision, word, graph, user = (channel(t) for t in (vision_target, word_target,
                                                        graph_target, user_target))
    server.on_stop(lambda: [asyncio.ensure_future(c.close()) for c in channels])
    late.target = RecommenderServicer(models, Backends(
        vision_pb2_grpc.VisionServiceStub(vision),
        word and word_pb2_grpc.WordEmbeddingServiceStub(word),
        graph and graph_pb2_grpc.GraphEmbeddingServiceStub(graph),
        user and user_pb2_grpc.UserProfileServiceStub(user),
        vision_deadline, backend_deadline), cache)
    await server.set_serving(True)
    log.info("recommender: model %s, %d hashtags; vision %s, word %s, graph %s, user %s",
             models.version, len(models.vocabulary), vision_target, word_target,
             graph_target, user_target)
    return server


async def _main() -> None:
    setup_logging()
    env = os.environ.get
    server = await serve(
        env("HASHREC_RECOMMENDER_HOST", "127.0.0.1"),
        int(env("HASHREC_RECOMMENDER_PORT", DEFAULT_PORT)),
        resolve_artifact(Path(os.environ["HASHREC_MODEL_DIR"]), KIND),
        env("HASHREC_VISION_TARGET", "127.0.0.1:50051"),
        env("HASHREC_WORD_TARGET", "127.0.0.1:50052"),
        env("HASHREC_GRAPH_TARGET", "127.0.0.1:50053"),
        env("HASHREC_USER_TARGET", "127.0.0.1:50054"),
        metrics_port=int(env("HASHREC_RECOMMENDER_METRICS_PORT",
                                        DEFAULT_METRICS_PORT)),
        vision_deadline=float(env("HASHREC_VISION_DEADLINE_S", "10")),
        backend_deadline=float(env("HASHREC_BACKEND_DEADLINE_S", "2")),
        cache=make_cache(env("HASHREC_REDIS_URL")))
    server.stop_on_signals()
    await server.wait()


if __name__ == "__main__":
    asyncio.run(_main())
