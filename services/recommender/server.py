"""RecommenderService over gRPC: orchestration and transport; the math is in model.py.

Recommend:
1. VisionService.Embed (required: every method reads the photo's features and labels);
2. in parallel, each with its own deadline inside the caller's: the local methods
   (frequency, knn, mlp), WordEmbeddingService.Score, GraphEmbeddingService.Score, and
   UserProfileService.Score when a user id is given;
3. fusion of the photo methods that answered (model.py: Fusion), conditioned on the user
   when the user service knows them (model.py: condition_on_user);
4. the top k, each hashtag with its score and the signals (method, normalised score, rank).
Steps 2 (the local methods) to 4 run batched across concurrent calls on the service's one
numeric thread (answer.py; shared/batching.py), as do word, graph, user and vision.

A backend that is down, late, or serves another model version is left out, and the answer
says degraded, with the reasons; only vision is required. At most HASHREC_MAX_IN_FLIGHT
calls are worked on at once: the next is refused at once with RESOURCE_EXHAUSTED and a
retry hint (shared/admission.py), so an admitted call is never degraded for our own
queueing. Complete photo-side results (features, every photo method's scores and their
fusion) are cached by the image's sha256 and the model version, so a photo seen before
costs only the user call; a stranger's answer is cached whole (one read).

Config from the environment: HASHREC_RECOMMENDER_HOST (127.0.0.1),
HASHREC_RECOMMENDER_PORT (50050), HASHREC_RECOMMENDER_METRICS_PORT (9100),

HASHREC_MODEL_DIR (a `hashrec train` directory, or a folder of them: the newest),
HASHREC_VISION_TARGET (127.0.0.1:50051),
HASHREC_WORD_TARGET (:50052), HASHREC_GRAPH_TARGET (:50053), HASHREC_USER_TARGET (:50054;
several, comma-separated: the user service's shards in shard order, each user's calls routed
to the shard that owns them)
(an empty target: that backend is not used), HASHREC_VISION_DEADLINE_S (10),
HASHREC_BACKEND_DEADLINE_S (5: word, graph, user), HASHREC_MAX_IN_FLIGHT (64),
HASHREC_REDIS_URL (unset: in-process),
HASHREC_REDIS_PASSWORD (Redis AUTH), HASHREC_ROLLOUT_WAIT_S (120: how long a rollout waits for
word and graph to serve the new version).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
from collections.abc import Awaitable
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

from services.image_models import (
    KIND,
    ImageModels,
    load_image_models,
    served_methods,
    swap_on_reload,
)
from services.recommender.answer import Answers, PhotoScores, Prepared, Request
from services.recommender.backends import (
    Backends,
    UserShards,
    call_timeout,
    reason,
    said,
)
from services.recommender.routing import (
    USER_COMMUNITIES,
    say_communities,
    user_mix,
    where_user_posts,
)
from services.recommender.user_calls import UserCalls
from services.recommender.user_side import USER_DEPTH, USER_WEIGHT, UserPart
from shared.admission import Admission, abort_overloaded, retry_after_seconds
from shared.artifacts import resolve_artifact
from shared.backbone import FEATURE_DIM, vision_model_id
from shared.batching import Batcher, NumericWorker, OverloadedError
from shared.cache import Cache, LruCache, cache_key, make_cache
from shared.config import env_number, env_port, required_env, setup_logging
from shared.grpc_server import (
    GrpcServer,
    aio_channel,
    k_or_abort,
    limits_or_abort,
    run_service,
    start_loading,
)
from shared.limits import user_id_problem
from shared.photos import MACHINE_LABELS_PER_PHOTO, PhotoSet
from shared.scoring import GRAPH_METHODS, WORD_METHODS, describe, photo_set
from shared.tracing import client_interceptors

log = logging.getLogger(__name__)
SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name
DEFAULT_PORT, DEFAULT_METRICS_PORT = "50050", "9100"
MAX_K = 100
#: Recommend calls worked on at once; past it, RESOURCE_EXHAUSTED with a retry hint
DEFAULT_MAX_IN_FLIGHT = 64
#: photos whose prepared answers (answer.py: Prepared, about 20 KB each) stay in memory
PREPARED_PHOTOS = 2048
LOCAL_METHODS = ("frequency", "knn", "mlp")


class RecommenderServicer(UserCalls):
    def __init__(self, models: ImageModels, backends: Backends, remote_methods: dict[
                 str, tuple[str, ...]], cache: Cache | None = None,
                 worker: NumericWorker | None = None, admission: Admission | None = None,
                 ) -> None:
        """``remote_methods``: backend ("word", "graph") → the methods it scores.
        ``worker``: the one thread for numeric work (shared with the servicer this one
        replaces in a rollout); ``admission``: how many Recommend calls run at once."""
        self.models, self.backends = models, backends
        self.cache = cache if cache is not None else LruCache()
        self.remote_methods = {backend: methods for backend, methods in
                               remote_methods.items()
                               if getattr(backends, backend) is not None and methods}
        #: the photo methods whose scores a complete answer holds, in a fixed order
        self.photo_methods = tuple(m for m in LOCAL_METHODS if m in models.methods) + tuple(
            m for methods in self.remote_methods.values() for m in methods)
        #: each method's hashtags outside the vocabulary, learned from its first answer
        self.outside_terms: dict[str, tuple[str, ...]] = {}
        self.answers = Answers(models, self.photo_methods, self.outside_terms)
        #: what every answer for a photo seen lately shares, by its sha256 (newest last)
        self.prepared: collections.OrderedDict[str, Prepared] = collections.OrderedDict()
        #: how vision described the photos seen lately, by sha256 (whatever their routing)
        self.descriptions: collections.OrderedDict[str, photo_pb2.PhotoDescription] = \
            collections.OrderedDict()
        self.worker = worker or NumericWorker("recommender")
        self.admission = admission or Admission("the recommender", DEFAULT_MAX_IN_FLIGHT)
        # The local methods of a batch's photos, and the fusion and answers of a batch's
        # requests: one batch each at a time, on the one worker.
        self.local = Batcher("local methods", self._local_batch, self.worker)
        self.finish = Batcher("fusion", self.answers.answer, self.worker)

    def stop(self) -> None:
        self.local.stop()
        self.finish.stop()

    def queued(self) -> int:
        return self.local.queued + self.finish.queued

    def _local_batch(self, photos: list[PhotoSet]) -> list[dict[str, np.ndarray]]:
        batch = PhotoSet.joined(photos)
        scores = {name: self.models.methods[name].scores(batch)
                  for name in LOCAL_METHODS if name in self.models.methods}
        return [{name: rows[row] for name, rows in scores.items()}
                for row in range(len(photos))]

    async def until_backends_serve(self, version: str, timeout: float) -> bool:
        """Waits until every backend answers a Score for ``version`` with that version
        (they load a new version before the recommender switches to it: the rollout's
        order), or ``timeout`` seconds; whether they all did."""
        probe = photo_pb2.ScoreRequest(photo=photo_pb2.PhotoDescription(
            features=[0.0] * FEATURE_DIM, vision_model_version=vision_model_id()),
            model_version=version)
        deadline = asyncio.get_running_loop().time() + timeout
        waiting = list(self.remote_methods)
        while waiting:
            try:
                reply = await getattr(self.backends, waiting[0]).Score(
                    probe, timeout=self.backends.deadline)
                if reply.model_version == version:
                    waiting.pop(0)
                    continue
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                log.warning("recommender: %s not on model %s after %.0f s; switching anyway "
                            "(their answers are left out until they are)", waiting, version,
                            timeout)
                return False
            await asyncio.sleep(0.5)
        return True

    async def _embed(self, image: bytes, context: grpc.aio.ServicerContext,
                     ) -> vision_pb2.EmbedResponse:
        try:
            return await self.backends.vision.Embed(
                vision_pb2.EmbedRequest(image=image, top_labels=MACHINE_LABELS_PER_PHOTO),
                timeout=call_timeout(self.backends.vision_deadline, context))
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                await context.abort(code, error.details())
            retry = retry_after_seconds(error)
            if retry is not None:  # vision at capacity: so are we, for this call
                await abort_overloaded(context, OverloadedError("the vision service", retry))
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"vision service: {code.name}: {error.details()}")
            raise

    async def _photo_scores(self, image: bytes, digest: str, user_id: str, k: int,
                            context: grpc.aio.ServicerContext, mix: np.ndarray | None,
                            asked: UserPart | None = None,
                            ) -> tuple[PhotoScores, asyncio.Future | None]:
        """Every photo method's scores of the photo, and the user's part (``asked``, or a
        call started as soon as the photo's description is known) when there is a user.
        Complete answers are cached by the image's sha256 and the model version, so a
        photo seen before costs neither vision nor the photo methods nor the fusion."""
        cached = self.answers.from_cache(self.cache.get(
            cache_key("photo_scores", self.models.version, digest)))
        if cached is not None:
            return cached, self._user_call(cached.description, user_id, k, context, asked)
        description = describe(await self._embed(image, context))
        user = self._user_call(description, user_id, k, context, asked)
        photos = photo_set(description).routed(mix)
        backends = self.backends
        calls: dict[str, Awaitable] = {"local": self.local.submit(photos)}
        timeout = call_timeout(backends.deadline, context)
        score_request = photo_pb2.ScoreRequest(
            photo=description, model_version=self.models.version,
            outside_hashtags_known=bool(self.outside_terms),
            community_weights=() if mix is None else mix.tolist())
        for backend in self.remote_methods:
            calls[backend] = getattr(backends, backend).Score(score_request, timeout=timeout)
        results = dict(zip(calls, await asyncio.gather(*calls.values(),
                                                       return_exceptions=True), strict=True))
        answer = PhotoScores(description, {}, {}, [])
        for backend, result in results.items():
            if isinstance(result, BaseException):
                if backend == "local":
                    raise result
                answer.reasons.append(reason(backend, result))
            elif backend == "local":
                answer.per_method.update(result)
            elif result.model_version != self.models.version:
                answer.reasons.append(f"{backend}: serves model {result.model_version}, the "
                                      f"recommender {self.models.version}")
            else:
                self._take(backend, result, answer)
        return answer, user

    def _take(self, backend: str, result: photo_pb2.VocabularyScores,
              answer: PhotoScores) -> None:
        """A scoring service's methods into ``answer``, each checked against the model."""
        vocabulary = len(self.models.vocabulary)
        for method in result.methods:
            if method.method not in self.remote_methods[backend]:
                continue
            if len(method.scores) != vocabulary:
                answer.reasons.append(f"{backend}: {len(method.scores)} {method.method} "
                                      f"scores for {vocabulary} hashtags")
                continue
            if method.outside_scores:
                # the hashtags travel until we know them, then only their scores
                terms = self.outside_terms.get(method.method) or tuple(
                    method.outside_hashtags)
                if len(terms) != len(method.outside_scores):
                    answer.reasons.append(f"{backend}: {len(method.outside_scores)} outside "
                                          f"{method.method} scores for {len(terms)} hashtags")
                    continue
                self.outside_terms.setdefault(method.method, terms)
                answer.outside[method.method] = (terms, np.asarray(method.outside_scores,
                                                                   dtype=np.float32))
            answer.per_method[method.method] = np.asarray(method.scores, dtype=np.float32)
        missing = set(self.remote_methods[backend]) - set(answer.per_method)
        if missing:
            answer.reasons.append(f"{backend}: no scores for {sorted(missing)}")

    def _user_call(self, description: photo_pb2.PhotoDescription, user_id: str, k: int,
                   context: grpc.aio.ServicerContext, asked: UserPart | None = None,
                   ) -> asyncio.Future | None:
        """The user's part, as a future: ``asked`` when the call already answered."""
        if asked is not None:
            done = asyncio.get_running_loop().create_future()
            done.set_result(asked)
            return done
        if self.backends.user is None or not user_id:
            return None
        return asyncio.ensure_future(self._user_scores(description, user_id, k, context))

    async def _user_scores(self, description: photo_pb2.PhotoDescription, user_id: str,
                           k: int, context: grpc.aio.ServicerContext) -> UserPart:
        """The user model's top hashtags with relative probabilities, for a known user, the
        weight the user model was fitted to be given (USER_WEIGHT when it has none), and
        where the user posts."""
        try:
            reply = await self.backends.user.for_user(user_id).Score(
                user_pb2.UserScoreRequest(photo=description, user_id=user_id,
                                          k=max(k, USER_DEPTH)),
                timeout=call_timeout(self.backends.deadline, context))
        except grpc.aio.AioRpcError as error:
            return UserPart([], USER_WEIGHT, [reason(self.backends.user.name(user_id), error)],
                            failed=error.code().name)
        if not reply.known_user:
            return UserPart([], USER_WEIGHT, [], dict(reply.communities))
        # a fitted 0 is the photo alone; an old user model that fitted none sends 0 too
        weight = reply.user_weight if reply.user_weight_fitted or reply.user_weight > 0 \
            else USER_WEIGHT
        return UserPart([(h.hashtag, h.relative_probability) for h in reply.hashtags],
                        weight, [], dict(reply.communities))

    async def Recommend(self, request: recommender_pb2.RecommendRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> recommender_pb2.RecommendResponse:
        k = await k_or_abort(request.k, MAX_K, context)
        await limits_or_abort(context, user_id_problem(request.user_id))
        try:
            mix = self.models.community_mix(request.community) if request.community else None
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise
        try:
            with self.admission.slot():
                routed_by, missing, asked = ("request" if mix is not None else "photo"), \
                    None, None
                sha = hashlib.sha256(request.image).hexdigest()
                if mix is None and request.user_id and self.backends.user is not None:
                    mix, missing, asked = await self._where_user_posts(request.user_id, sha, k,
                                                                       context)
                    routed_by = "user" if mix is not None else routed_by
                reply = await self._recommend(request, sha, k, context, mix, routed_by, asked)
                if missing:  # routed by the gate alone: say so, as for any backend
                    reply.degraded = True
                    reply.degraded_reasons.append(missing)
                return reply
        except OverloadedError as error:
            await abort_overloaded(context, error)
            raise

    async def _where_user_posts(self, user_id: str, sha: str, k: int,
                                context: grpc.aio.ServicerContext,
                                ) -> tuple[np.ndarray | None, str | None, UserPart | None]:
        """(the user's community mix, why it is missing, the user's part when it came with
        it). For a photo described lately, the user's Score call brings both, one call;
        for a new photo the mix must route the photo before the user can score it, so it
        is asked alone."""
        description = self.descriptions.get(sha)
        if description is None:
            mix, missing = await where_user_posts(
                self.backends.user.for_user(user_id), user_id, self.models.communities,
                call_timeout(self.backends.deadline, context))
            return mix, missing, None
        self.descriptions.move_to_end(sha)  # a photo asked for often stays described
        asked = await self._user_scores(description, user_id, k, context)
        if asked.failed is not None:
            return None, said(USER_COMMUNITIES, asked.failed), asked
        return user_mix(asked.communities, self.models.communities), None, asked

    async def _recommend(self, request: recommender_pb2.RecommendRequest, sha: str, k: int,
                         context: grpc.aio.ServicerContext, mix: np.ndarray | None,
                         routed_by: str, asked: UserPart | None = None,
                         ) -> recommender_pb2.RecommendResponse:
        """``asked``: the user's part when it is already known."""
        # a photo routed by what the request knows is another photo to every cache
        digest = sha + ("" if mix is None else "@" + ",".join(f"{w:.2f}" for w in mix))
        anonymous = not request.user_id or self.backends.user is None
        answer_key = cache_key("answer", self.models.version, f"{digest}:{k}")
        if anonymous:  # a photo seen before, without a user: one cache read
            cached = self.cache.get(answer_key)
            if cached is not None:
                return recommender_pb2.RecommendResponse.FromString(cached.tobytes())
        prepared = self.prepared.get(digest)
        if prepared is not None:  # seen here lately: only the user's part is new
            self.prepared.move_to_end(digest)
            call = Request(None, k, prepared)
            user = self._user_call(prepared.description, request.user_id, k, context, asked)
            was_cached = True
        else:
            photo, user = await self._photo_scores(request.image, digest, request.user_id,
                                                   k, context, mix, asked)
            if routed_by == "request":
                photo.community = request.community  # its own learned fusion ranks
            call = Request(photo, k)
            was_cached = photo.fused is not None
        if user is not None:
            part = await user
            call.user_hashtags, call.user_weight, call.reasons = part.hashtags, part.weight, \
                part.reasons
        try:
            reply = await self.finish.submit(call)
        except OverloadedError as error:
            await abort_overloaded(context, error)
            raise
        say_communities(reply, self.models, (call.prepared or call.photo).description, mix,
                        routed_by)
        # after the fusion, which may have fallen back to equal weights
        complete = was_cached or self.answers.complete(call.photo)
        if complete and call.photo is not None:
            if not was_cached:
                self.cache.set(cache_key("photo_scores", self.models.version, digest),
                               self.answers.to_cache(call.photo))
            self.prepared[digest] = call.prepared
            self.descriptions[sha] = call.prepared.description
            self.descriptions.move_to_end(sha)
            for kept in (self.prepared, self.descriptions):
                while len(kept) > PREPARED_PHOTOS:
                    kept.popitem(last=False)
        if complete and anonymous:
            self.cache.set(answer_key, np.frombuffer(reply.SerializeToString(), np.uint8))
        return reply

    async def Communities(self, request: recommender_pb2.CommunitiesRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext,
                          ) -> recommender_pb2.CommunitiesResponse:
        return recommender_pb2.CommunitiesResponse(names=self.models.communities,
                                                   model_version=self.models.version)


async def serve(host: str, port: int, model_dir: Path, vision_target: str,
                word_target: str | None = None, graph_target: str | None = None,
                user_target: str | None = None, metrics_port: int | None = None,
                vision_deadline: float = 10.0, backend_deadline: float = 5.0,
                cache: Cache | None = None, rollout_wait: float = 120.0,
                max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> GrpcServer:
    """Starts NOT_SERVING, loads and verifies the models, connects the backends, then
    SERVING. A target left None is not used (its signal never appears). On ``reload`` it
    switches to a newer verified version once word and graph serve it too (at most
    ``rollout_wait`` seconds later)."""
    server, late = await start_loading(
        SERVICE_NAME, recommender_pb2_grpc.add_RecommenderServiceServicer_to_server,
        "recommender model", host, port, metrics_port)
    models = await asyncio.get_running_loop().run_in_executor(
        None, lambda: load_image_models(model_dir, served_methods(model_dir, LOCAL_METHODS)))
    channels = []

    def channel(target: str | None) -> grpc.aio.Channel | None:
        if not target:
            return None
        channels.append(aio_channel(target, client_interceptors()))
        return channels[-1]

    vision, word, graph = (channel(t) for t in (vision_target, word_target, graph_target))
    # several user targets, comma-separated: the shards, in shard order
    user_shards = [channel(t.strip()) for t in (user_target or "").split(",") if t.strip()]
    server.on_stop(lambda: [asyncio.ensure_future(c.close()) for c in channels])
    backends = Backends(
        vision_pb2_grpc.VisionServiceStub(vision),
        word and word_pb2_grpc.WordEmbeddingServiceStub(word),
        graph and graph_pb2_grpc.GraphEmbeddingServiceStub(graph),
        UserShards([user_pb2_grpc.UserProfileServiceStub(c) for c in user_shards])
        if user_shards else None,
        vision_deadline, backend_deadline)

    worker = NumericWorker("recommender")
    servicers: list[RecommenderServicer] = []
    admission = Admission("the recommender", max_in_flight, server.registry,
                          queued=lambda: sum(s.queued() for s in servicers[-2:]))
    server.on_stop(lambda: [s.stop() for s in servicers])
    server.on_stop(worker.stop)

    def servicer(models: ImageModels) -> RecommenderServicer:
        directory = models.directory or model_dir
        servicers.append(RecommenderServicer(models, backends, {
            "word": tuple(served_methods(directory, WORD_METHODS)),
            "graph": tuple(served_methods(directory, GRAPH_METHODS))}, cache, worker,
            admission))
        while len(servicers) > 2:  # the serving version and the one before it, no more
            servicers.pop(0).stop()
        return servicers[-1]

    late.target = server.servicer = servicer(models)

    async def successor(models: ImageModels, serving: object) -> RecommenderServicer:
        new = servicer(models)
        await new.until_backends_serve(models.version, rollout_wait)
        return new

    swap_on_reload(server, late, "recommender", model_dir, LOCAL_METHODS, successor)
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
        env_port("HASHREC_RECOMMENDER_PORT", DEFAULT_PORT),
        resolve_artifact(Path(required_env("HASHREC_MODEL_DIR",
                                           "the model to serve")), KIND),
        env("HASHREC_VISION_TARGET", "127.0.0.1:50051"),
        env("HASHREC_WORD_TARGET", "127.0.0.1:50052"),
        env("HASHREC_GRAPH_TARGET", "127.0.0.1:50053"),
        env("HASHREC_USER_TARGET", "127.0.0.1:50054"),
        metrics_port=env_port("HASHREC_RECOMMENDER_METRICS_PORT", DEFAULT_METRICS_PORT),
        vision_deadline=float(env("HASHREC_VISION_DEADLINE_S", "10")),
        backend_deadline=float(env("HASHREC_BACKEND_DEADLINE_S", "5")),
        cache=make_cache(env("HASHREC_REDIS_URL")),
        rollout_wait=float(env("HASHREC_ROLLOUT_WAIT_S", "120")),
        max_in_flight=int(env_number("HASHREC_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT, int)))
    server.stop_on_signals()
    server.reload_on_signal()
    await server.wait()


if __name__ == "__main__":
    run_service(_main, "recommender")
