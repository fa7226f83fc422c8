"""The stack under concurrent load, over real sockets: the photos of concurrent calls are
scored in batches, a full recommender refuses at once (gRPC RESOURCE_EXHAUSTED with a
retry hint, HTTP 429 with Retry-After), and 64 concurrent cold requests all come back
whole."""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc
import httpx
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

from bench.serving import new_photo
from services.gateway.server import Settings
from services.recommender.server import serve as serve_recommender
from shared.admission import RETRY_AFTER_KEY
from shared.grpc_server import CHANNEL_OPTIONS
from shared.scoring import describe
from tests.servers import start_gateway, stop_gateway


def _photos(data_dir: Path, count: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((data_dir / "food" / "images").glob("*.jpg"))
            [:count]]


def _description(stack: dict, photo: bytes) -> photo_pb2.PhotoDescription:
    reply = vision_pb2_grpc.VisionServiceStub(stack["channels"]["vision"]).Embed(
        vision_pb2.EmbedRequest(image=photo, top_labels=5), timeout=60)
    return describe(reply)


def _close(one: object, other: object) -> bool:
    if hasattr(one, "methods"):  # VocabularyScores
        return all(a.method == b.method and np.allclose(a.scores, b.scores, rtol=1e-4,
                                                        atol=1e-6)
                   and np.allclose(a.outside_scores, b.outside_scores, rtol=1e-4, atol=1e-6)
                   for a, b in zip(one.methods, other.methods, strict=True))
    return [h.hashtag for h in one.hashtags] == [h.hashtag for h in other.hashtags] \
        and np.allclose([h.score for h in one.hashtags], [h.score for h in other.hashtags],
                        rtol=1e-4, atol=1e-6)


def test_concurrent_score_calls_reach_each_model_as_fewer_batches_than_calls(
        stack: dict, data_dir: Path) -> None:
    calls = 16
    photo = _description(stack, _photos(data_dir, 1)[0])
    channels = stack["channels"]
    scorers = {
        "word": (word_pb2_grpc.WordEmbeddingServiceStub(channels["word"]).Score,
                 photo_pb2.ScoreRequest(photo=photo), stack["word"].servicer.batcher),
        "graph": (graph_pb2_grpc.GraphEmbeddingServiceStub(channels["graph"]).Score,
                  photo_pb2.ScoreRequest(photo=photo), stack["graph"].servicer.batcher),
        "user": (user_pb2_grpc.UserProfileServiceStub(channels["user"]).Score,
                 user_pb2.UserScoreRequest(photo=photo, user_id="u00003", k=10),
                 stack["user"].servicer.scoring)}
    for name, (score, request, batcher) in scorers.items():
        batches, items = batcher.batches, batcher.items
        futures = [score.future(request, timeout=120) for _ in range(calls)]  # all in flight
        replies = [future.result() for future in futures]
        # One answer for one photo, whatever batch it rode in (to float rounding: a
        # matrix product's sums split differently with the number of rows).
        assert all(_close(reply, replies[0]) for reply in replies), name
        assert batcher.items - items == calls, name
        assert batcher.batches - batches < calls, f"{name}: one batch a call"


def test_a_full_recommender_refuses_at_once_and_the_gateway_says_429_with_retry_after(
        stack: dict, data_dir: Path) -> None:
    photo = _photos(data_dir, 1)[0]
    recommender = stack["recommender"]
    admission = recommender.servicer.admission
    stub = recommender_pb2_grpc.RecommenderServiceStub(stack["channels"]["recommender"])
    server, url = start_gateway(stack["loop"], Settings(recommender=recommender.address,
                                                        photo_root=data_dir))
    shed = admission.shed
    try:
        with contextlib.ExitStack() as held:
            for _ in range(admission.limit):  # every place taken
                held.enter_context(admission.slot())
            try:
                stub.Recommend(recommender_pb2.RecommendRequest(image=photo, k=5),
                               timeout=60)
                raise AssertionError("a full recommender answered")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                hint = dict(error.trailing_metadata())[RETRY_AFTER_KEY]
                assert int(hint) >= 100
            response = httpx.post(f"{url}/api/recommend", files={
                "image": ("photo.jpg", photo, "image/jpeg")}, timeout=60)
            assert response.status_code == 429
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"] == "RESOURCE_EXHAUSTED"
        assert admission.shed - shed == 2
        assert recommender.registry.get_sample_value("hashrec_shed_total") >= 2
        assert recommender.registry.get_sample_value("hashrec_admitted_total") >= 1
        # how late the event loop runs: watched from the server's start
        assert recommender.registry.get_sample_value(
            "hashrec_event_loop_lag_seconds_count") > 0
        # places free again: answered
        assert stub.Recommend(recommender_pb2.RecommendRequest(image=photo, k=5),
                              timeout=60).hashtags
    finally:
        stop_gateway(stack["loop"], server)


def test_64_concurrent_cold_requests_all_come_back_whole(stack: dict, data_dir: Path) -> None:
    """A recommender with the deployed deadlines and admission limit, in front of the test
    stack's backends: 64 photos no service has seen, at once, half with a known user."""
    loop = stack["loop"]
    recommender = loop.call(serve_recommender(
        "127.0.0.1", 0, stack["trained"].directory, stack["vision"].address,
        stack["word"].address, stack["graph"].address, stack["user"].address))
    photos = _photos(data_dir, 16)
    try:
        with grpc.insecure_channel(recommender.address, options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
            futures = [stub.Recommend.future(recommender_pb2.RecommendRequest(
                image=new_photo(photos[i % len(photos)], 7000 + i),
                user_id="u00003" if i % 2 else "", k=10), timeout=300) for i in range(64)]
            replies = [future.result() for future in futures]
        assert all(len(reply.hashtags) == 10 for reply in replies)
        assert [list(r.degraded_reasons) for r in replies if r.degraded] == []
        local = recommender.servicer.local
        assert local.items == 64 and local.batches < 64
    finally:
        loop.call(recommender.stop())
