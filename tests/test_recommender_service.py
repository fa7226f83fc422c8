"""RecommenderService with a real VisionService behind it, over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

from commands.train import train_image_models
from services.image_models import load_image_models
from services.recommender.server import SERVICE_NAME
from services.recommender.server import serve as serve_recommender
from services.vision.server import serve as serve_vision
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from shared.grpc_server import CHANNEL_OPTIONS
from tests.servers import LoopThread
from tests.training import pool


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path,
          feature_store) -> Iterator[dict]:
    store, model = feature_store, feature_store.model  # features computed once a session
    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:160]
    trained = train_image_models(posts, store, tmp_path_factory.mktemp("models"),
                                 min_count=2, folds=3, progress=False, engine=pool())
    loop = LoopThread()
    vision = loop.call(serve_vision("127.0.0.1", 0, model))
    recommender = loop.call(serve_recommender("127.0.0.1", 0, trained.directory,
                                              vision.address))
    with grpc.insecure_channel(recommender.address, options=CHANNEL_OPTIONS) as channel:
        yield {"channel": channel, "vision": vision, "version": trained.version,
               "model_dir": trained.directory,
               "loop": loop, "recommender": recommender}
    loop.call(recommender.stop())
    loop.call(vision.stop())
    loop.close()


def _recommend(channel: grpc.Channel, image: bytes, k: int = 0,
               ) -> recommender_pb2.RecommendResponse:
    return recommender_pb2_grpc.RecommenderServiceStub(channel).Recommend(
        recommender_pb2.RecommendRequest(image=image, k=k), timeout=60)


def test_a_photo_gets_ranked_hashtags_with_their_signals(stack: dict, data_dir: Path) -> None:
    photo = (data_dir / "food" / "images" / "0000008.jpg").read_bytes()  # a cheeseburger
    reply = _recommend(stack["channel"], photo, k=8)
    assert len(reply.hashtags) == 8 and reply.model_version == stack["version"]
    scores = [h.score for h in reply.hashtags]
    assert scores == sorted(scores, reverse=True)
    assert all(h.signals for h in reply.hashtags[:3])  # the top ones have support
    methods = {s.method for h in reply.hashtags for s in h.signals}
    assert {"knn", "mlp"} <= methods
    assert len(_recommend(stack["channel"], photo).hashtags) == 10  # k = 0 means 10


def test_a_new_photo_gets_its_own_hashtags_that_frequency_would_miss(stack: dict,
                                                                    data_dir: Path) -> None:
    """A coffee photo the models never saw: its top 8 holds at least two of its poster's
    hashtags that global frequency's top 8 lacks ("food" alone would pass a prior)."""
    post = next(p for p in normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))
                if p.image.name == "0000508.jpg")
    models = load_image_models(stack["model_dir"])
    prior = models.methods["frequency"].prior
    frequency_top = {models.vocabulary[i] for i in np.argsort(-prior)[:8]}
    reply = _recommend(stack["channel"], post.image.read_bytes(), k=8)
    gained = {h.hashtag for h in reply.hashtags} & set(post.hashtags) - frequency_top
    assert len(gained) >= 2, (gained, [h.hashtag for h in reply.hashtags])


@pytest.mark.parametrize(("image", "k", "message"), [
    (b"", 5, "image is empty"),
    (bytes(range(256)) * 64, 5, "not a decodable image"),
    (None, -1, "k must be between 1 and 100"),
    (None, 1000, "k must be between 1 and 100"),
])
def test_bad_requests_are_invalid_argument_and_the_next_call_succeeds(
        stack: dict, data_dir: Path, image: bytes | None, k: int, message: str) -> None:
    photo = (data_dir / "food" / "images" / "0000008.jpg").read_bytes()
    with pytest.raises(grpc.RpcError) as error:
        _recommend(stack["channel"], photo if image is None else image, k=k)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    health = health_pb2_grpc.HealthStub(stack["channel"]).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(_recommend(stack["channel"], photo, k=3).hashtags) == 3


def test_vision_down_is_unavailable_with_the_reason(stack: dict, data_dir: Path) -> None:
    loop: LoopThread = stack["loop"]
    # The same trained models, but the vision service it points at does not exist.
    orphan = loop.call(serve_recommender("127.0.0.1", 0, stack["model_dir"],
                                         "127.0.0.1:9", vision_deadline=2))
    photo = (data_dir / "food" / "images" / "0000008.jpg").read_bytes()
    try:
        with grpc.insecure_channel(orphan.address) as channel, \
                pytest.raises(grpc.RpcError) as error:
            _recommend(channel, photo)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "vision service" in error.value.details()
    finally:
        loop.call(orphan.stop())


def test_cli_recommend_prints_json_and_names_errors(stack: dict, data_dir: Path, tmp_path: Path,
                                                    capsys) -> None:
    import json

    from commands.cli import main

    target = stack["recommender"].address
    photo = data_dir / "food" / "images" / "0000008.jpg"
    assert main(["recommend", str(photo), "--target", target, "-k", "4", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["hashtags"]) == 4 and answer["degraded"] is False
    assert {"hashtag", "score", "signals"} <= set(answer["hashtags"][0])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a photo at all")
    assert main(["recommend", str(junk), "--target", target]) == 1
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: ")


def test_cli_recommend_into_a_closed_pipe_ends_quietly(stack: dict, data_dir: Path) -> None:
    """`hashrec recommend PHOTO | head -1`: the reader went away; no BrokenPipeError."""
    import subprocess
    import sys

    photo = data_dir / "food" / "images" / "0000008.jpg"
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "recommend", str(photo), "--target",
         stack["recommender"].address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before it writes a line
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 0
    assert b"Traceback" not in errors and b"BrokenPipeError" not in errors, errors


def test_a_model_without_word_and_graph_methods_is_served_by_the_whole_stack(
        stack: dict, data_dir: Path, tmp_path: Path, feature_store) -> None:
    """`hashrec train --methods frequency,knn`: word and graph serve it (SERVING, and Score
    and Similar say what the model lacks) instead of exiting, and the recommender answers
    whole without asking them."""
    from hashrec.v1 import graph_pb2_grpc, photo_pb2, word_pb2, word_pb2_grpc

    from services.graph.server import serve as serve_graph
    from services.word.server import serve as serve_word

    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:100]
    trained = train_image_models(posts, feature_store, tmp_path / "models",
                                 methods=("frequency", "knn"), min_count=2, folds=3,
                                 progress=False, engine=pool())
    loop: LoopThread = stack["loop"]
    word = loop.call(serve_word("127.0.0.1", 0, trained.directory))
    graph = loop.call(serve_graph("127.0.0.1", 0, trained.directory))
    recommender = loop.call(serve_recommender(
        "127.0.0.1", 0, trained.directory, stack["vision"].address, word.address,
        graph.address))
    try:
        for server, stub in ((word, word_pb2_grpc.WordEmbeddingServiceStub),
                             (graph, graph_pb2_grpc.GraphEmbeddingServiceStub)):
            with grpc.insecure_channel(server.address) as channel:
                assert health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5).status == \
                    health_pb2.HealthCheckResponse.SERVING
                with pytest.raises(grpc.RpcError) as error:
                    stub(channel).Score(photo_pb2.ScoreRequest(), timeout=10)
                assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert f"model {trained.version} holds none of the methods" in \
                    error.value.details()
        with grpc.insecure_channel(word.address) as channel, \
                pytest.raises(grpc.RpcError) as error:
            word_pb2_grpc.WordEmbeddingServiceStub(channel).Similar(
                word_pb2.SimilarRequest(hashtag="pizza", k=3), timeout=10)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "trained without the word method" in error.value.details()
        photo = (data_dir / "food" / "images" / "0000008.jpg").read_bytes()
        with grpc.insecure_channel(recommender.address) as channel:
            reply = _recommend(channel, photo, k=5)
        assert len(reply.hashtags) == 5 and not reply.degraded
        assert reply.model_version == trained.version
        assert {s.method for h in reply.hashtags for s in h.signals} <= {"frequency", "knn"}
    finally:
        for server in (recommender, graph, word):
            loop.call(server.stop())
