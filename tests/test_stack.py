"""The five services over real sockets: word, graph and user alone, then the whole stack
behind RecommenderService, a backend down or late, bad input, and Redis killed mid-test."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis as redis_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hashrec.v1 import (
    graph_pb2_grpc,
    photo_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
    word_pb2,
    word_pb2_grpc,
)

from services.recommender.server import SERVICE_NAME as RECOMMENDER
from services.recommender.server import serve as serve_recommender
from services.user.server import serve as serve_user
from services.vision.server import serve as serve_vision
from shared.cache import RedisCache
from shared.grpc_server import CHANNEL_OPTIONS
from shared.scoring import photo_set
from tests.servers import RedisServer, free_port, free_ports_in_a_row


def _photo(data_dir: Path, name: str = "0000008.jpg") -> bytes:
    return (data_dir / "food" / "images" / name).read_bytes()  # 0000008: a cheeseburger


def _describe(stack: dict, image: bytes) -> photo_pb2.PhotoDescription:
    reply = vision_pb2_grpc.VisionServiceStub(stack["channels"]["vision"]).Embed(
        vision_pb2.EmbedRequest(image=image, top_labels=5), timeout=60)
    return photo_pb2.PhotoDescription(features=reply.features, labels=reply.labels,
                                      vision_model_version=reply.model_version)


def _serving(channel: grpc.Channel, service: str = "") -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _recommend(stack: dict, image: bytes, user: str = "", k: int = 10,
               ) -> recommender_pb2.RecommendResponse:
    return recommender_pb2_grpc.RecommenderServiceStub(stack["channels"]["recommender"]) \
        .Recommend(recommender_pb2.RecommendRequest(image=image, user_id=user, k=k),
                   timeout=60)


# --- each service alone -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["word", "graph"])
def test_word_and_graph_score_the_whole_vocabulary(stack: dict, data_dir: Path,
                                                   name: str) -> None:
    stub = (word_pb2_grpc.WordEmbeddingServiceStub if name == "word"
            else graph_pb2_grpc.GraphEmbeddingServiceStub)(stack["channels"][name])
    photo = _describe(stack, _photo(data_dir))
    reply = stub.Score(photo_pb2.ScoreRequest(photo=photo), timeout=30)
    assert reply.model_version == stack["trained"].version
    served = {"word": ["word", "semantic"], "graph": ["graph"]}[name]
    assert [m.method for m in reply.methods] == served
    for answer in reply.methods:
        # Exactly what the trained method computes in-process for the same description.
        method = stack["trained"].methods[answer.method]
        expected = method.scores(photo_set(photo))[0]
        np.testing.assert_allclose(answer.scores, expected, rtol=1e-5, atol=1e-6)
        if answer.method == "semantic":  # hashtags of HARRISON's lists the photos lack
            assert list(answer.outside_hashtags) == list(method.extra)
            assert len(answer.outside_hashtags) > 100
            assert not set(answer.outside_hashtags) & set(stack["trained"].vocabulary)
            np.testing.assert_allclose(answer.outside_scores, method.scores_all(
                photo_set(photo))[0, len(expected):], rtol=1e-5, atol=1e-6)
        else:
            assert not answer.outside_hashtags
    assert _serving(stack["channels"][name])


@pytest.mark.parametrize(("photo", "message"), [
    (photo_pb2.PhotoDescription(features=[0.0] * 10), "must hold 1280 values"),
    (photo_pb2.PhotoDescription(features=[0.0] * 1280,
                                labels=[vision_pb2.MachineLabel(name="unicorn")]),
     "unknown machine label 'unicorn'"),
    (photo_pb2.PhotoDescription(features=[0.0] * 1280, vision_model_version="resnet-9"),
     "features of vision model 'resnet-9'"),
    (photo_pb2.PhotoDescription(features=[float("nan")] * 1280), "NaN or infinity"),
])
def test_scorers_refuse_photos_no_vision_model_of_ours_sent(
        stack: dict, photo: photo_pb2.PhotoDescription, message: str) -> None:
    for name, stub in (("word", word_pb2_grpc.WordEmbeddingServiceStub),
                       ("graph", graph_pb2_grpc.GraphEmbeddingServiceStub)):
        with pytest.raises(grpc.RpcError) as error:
            stub(stack["channels"][name]).Score(photo_pb2.ScoreRequest(photo=photo),
                                                timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.value.details()
        assert _serving(stack["channels"][name])
    with pytest.raises(grpc.RpcError) as error:
        user_pb2_grpc.UserProfileServiceStub(stack["channels"]["user"]).Score(
            user_pb2.UserScoreRequest(photo=photo), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_word_similar_finds_neighbours_and_names_unknown_hashtags(stack: dict) -> None:
    stub = word_pb2_grpc.WordEmbeddingServiceStub(stack["channels"]["word"])
    reply = stub.Similar(word_pb2.SimilarRequest(hashtag="#Food", k=5), timeout=10)
    assert len(reply.hashtags) == 5 and "food" not in [h.hashtag for h in reply.hashtags]
    similarities = [h.similarity for h in reply.hashtags]
    assert similarities == sorted(similarities, reverse=True) and similarities[0] <= 1.0001
    for hashtag, code in (("zzqxnotatag", grpc.StatusCode.NOT_FOUND),
                          ("🍔", grpc.StatusCode.INVALID_ARGUMENT),
                          ("", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as error:
            stub.Similar(word_pb2.SimilarRequest(hashtag=hashtag), timeout=10)
        assert error.value.code() == code, hashtag


def test_user_service_knows_its_users_and_answers_strangers(stack: dict,
                                                            data_dir: Path) -> None:
    stub = user_pb2_grpc.UserProfileServiceStub(stack["channels"]["user"])
    photo = _describe(stack, _photo(data_dir))
    known = stub.Score(user_pb2.UserScoreRequest(photo=photo, user_id="u00003", k=5),
                       timeout=10)
    stranger = stub.Score(user_pb2.UserScoreRequest(photo=photo, user_id="nobody", k=5),
                          timeout=10)
    assert known.known_user and not stranger.known_user
    assert len(known.hashtags) == len(stranger.hashtags) == 5
    assert known.hashtags[0].relative_probability == pytest.approx(1.0)
    assert [h.hashtag for h in known.hashtags] != [h.hashtag for h in stranger.hashtags]


def test_user_update_learns_ignores_bad_hashtags_and_survives_a_restart(
        stack: dict, data_dir: Path) -> None:
    stub = user_pb2_grpc.UserProfileServiceStub(stack["channels"]["user"])
    photo = _describe(stack, _photo(data_dir, "0000010.jpg"))
    vocabulary = stub.Score(user_pb2.UserScoreRequest(photo=photo, k=1000), timeout=10)
    target = vocabulary.hashtags[-1].hashtag  # the stranger model's least likely hashtag
    reply = stub.Update(user_pb2.UserUpdateRequest(
        user_id="zoë-new", photo=photo, photo_id="photo-x",
        hashtags=[f"#{target.upper()}", "", "🙂", "東京タワー", target]), timeout=30)
    assert list(reply.accepted) == [target] and reply.posts == 1
    assert reply.embedding_updated == stack["user"].servicer.lookup.tensor_active
    assert any("no letters or digits" in reason for reason in reply.ignored)
    assert any("'東京タワー': not in the vocabulary" in reason for reason in reply.ignored)
    for bad, message in ((user_pb2.UserUpdateRequest(user_id="", photo=photo,
                                                      hashtags=[target]), "user_id is empty"),
                         (user_pb2.UserUpdateRequest(user_id="u", photo=photo,
                                                      hashtags=["", "🙂"]),
                          "no usable hashtag")):
        with pytest.raises(grpc.RpcError) as error:
            stub.Update(bad, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.value.details()

    def rank(channel_stub: user_pb2_grpc.UserProfileServiceStub) -> int:
        ranked = channel_stub.Score(user_pb2.UserScoreRequest(photo=photo, user_id="zoë-new",
                                                              k=1000), timeout=10)
        return [h.hashtag for h in ranked.hashtags].index(target)

    before_restart = rank(stub)
    assert before_restart < len(vocabulary.hashtags) - 1  # the update moved it up
    # A second user service on the same model and a copy of the state: the journal is
    # replayed.
    loop = stack["loop"]
    state = stack["state"].parent / "state-copy"
    shutil.copytree(stack["state"], state)
    again = loop.call(serve_user("127.0.0.1", 0, stack["user_dir"], state))
    with grpc.insecure_channel(again.address, options=CHANNEL_OPTIONS) as channel:
        restarted = user_pb2_grpc.UserProfileServiceStub(channel)
        assert rank(restarted) == before_restart
        found = restarted.Retrieve(user_pb2.RetrieveRequest(hashtag=target, k=100,
                                                            user_id="zoë-new"), timeout=10)
        assert "photo-x" in [p.photo_id for p in found.photos]  # the poster's own upload
        anyone = restarted.Retrieve(user_pb2.RetrieveRequest(hashtag=target, k=100),
                                    timeout=10)
        assert "photo-x" not in [p.photo_id for p in anyone.photos]
    loop.call(again.stop())


def test_score_answers_while_an_update_holds_the_writer(stack: dict, data_dir: Path,
                                                       ) -> None:
    """Score never waits behind Update: with the writer thread busy, it still answers."""
    stub = user_pb2_grpc.UserProfileServiceStub(stack["channels"]["user"])
    photo = _describe(stack, _photo(data_dir, "0000009.jpg"))
    busy, release = threading.Event(), threading.Event()
    servicer = stack["user"].servicer
    servicer.writer.submit(lambda: (busy.set(), release.wait(60)))
    try:
        assert busy.wait(10)
        queued = stub.Update.future(user_pb2.UserUpdateRequest(
            user_id="queued", photo=photo, hashtags=[servicer.lookup.vocabulary[0]]),
            timeout=60)
        reply = stub.Score(user_pb2.UserScoreRequest(photo=photo, user_id="queued", k=3),
                           timeout=10)
        assert len(reply.hashtags) == 3 and not reply.known_user and not queued.done()
    finally:
        release.set()
    assert queued.result().posts == 1


# --- the whole stack ------------------------------------------------------------------------

def test_recommend_conditions_on_a_known_user(stack: dict, data_dir: Path) -> None:
    image = _photo(data_dir)
    stranger = _recommend(stack, image, user="", k=10)
    known = _recommend(stack, image, user="u00003", k=10)
    assert not stranger.degraded and not known.degraded, known.degraded_reasons
    methods = {s.method for h in stranger.hashtags for s in h.signals}
    assert {"knn", "mlp", "word", "graph"} <= methods and "user" not in methods
    assert "user" in {s.method for h in known.hashtags for s in h.signals}
    assert [h.hashtag for h in known.hashtags] != [h.hashtag for h in stranger.hashtags]
    unknown = _recommend(stack, image, user="never-seen-before", k=10)
    assert not unknown.degraded  # an unknown user is no error: the agnostic answer
    assert [h.hashtag for h in unknown.hashtags] == [h.hashtag for h in stranger.hashtags]


def test_a_known_users_own_hashtag_is_weighed_by_the_fitted_user_weight(stack: dict,
                                                                       data_dir: Path) -> None:
    from services.user.lookup import UserHashtagLookup

    fitted = UserHashtagLookup.load(stack["user_dir"]).user_weight
    assert fitted is not None  # the stack's user model was fitted against its photo model
    reply = _recommend(stack, _photo(data_dir), user="u00003", k=100)
    vocabulary = set(stack["trained"].vocabulary)
    # The user's best hashtag is a signature ("<handle>life"): outside the photo
    # vocabulary and proposed by no photo method, it scores the weighted user term alone,
    # weight · relative probability (1 for the best). Other hashtags outside the
    # vocabulary may also carry a photo method's placement (outside_candidates).
    signature = [h for h in reply.hashtags if h.hashtag not in vocabulary
                 and [(s.method, s.rank) for s in h.signals] == [("user", 1)]]
    assert len(signature) == 1, [(h.hashtag, h.signals) for h in reply.hashtags]
    assert signature[0].hashtag.endswith(("life", "daily"))
    assert signature[0].score == pytest.approx(fitted * signature[0].signals[0].score,
                                               rel=1e-5)


def test_hashtags_from_outside_the_photo_vocabulary_are_flagged(stack: dict,
                                                                data_dir: Path) -> None:
    reply = _recommend(stack, _photo(data_dir, "0000010.jpg"), k=100)
    vocabulary = set(stack["trained"].vocabulary)
    outside = [h.hashtag for h in reply.hashtags if h.outside_vocabulary]
    assert outside and not set(outside) & vocabulary
    assert all(h.hashtag in vocabulary for h in reply.hashtags if not h.outside_vocabulary)
    scores = [h.score for h in reply.hashtags]
    assert scores == sorted(scores, reverse=True)


def test_feedback_moves_that_users_ranking_and_retrieve_finds_the_photo(
        stack: dict, data_dir: Path) -> None:
    stub = recommender_pb2_grpc.RecommenderServiceStub(stack["channels"]["recommender"])
    image = _photo(data_dir, "0000022.jpg")
    before = _recommend(stack, image, user="fresh-user", k=100)
    stranger = user_pb2_grpc.UserProfileServiceStub(stack["channels"]["user"]).Score(
        user_pb2.UserScoreRequest(photo=_describe(stack, image), k=1000), timeout=10)
    # A hashtag only the user model knows, and one it finds unlikely for this photo.
    chosen = [h.hashtag for h in stranger.hashtags
              if h.hashtag not in stack["trained"].vocabulary][-1]
    assert chosen not in [h.hashtag for h in before.hashtags]
    for _ in range(3):
        reply = stub.Feedback(recommender_pb2.FeedbackRequest(
            image=image, user_id="fresh-user", hashtags=[chosen, "🍔"]), timeout=60)
        assert list(reply.accepted) == [chosen] and reply.ignored
    after = {h.hashtag: h for h in _recommend(stack, image, user="fresh-user", k=100).hashtags}
    assert chosen in after and "user" in {s.method for s in after[chosen].signals}
    found = stub.Retrieve(user_pb2.RetrieveRequest(hashtag=chosen, user_id="fresh-user",
                                                   k=100), timeout=30)
    photo_ids = [p.photo_id for p in found.photos]
    assert photo_ids.count(hashlib.sha256(image).hexdigest()) == 1  # indexed once
    scores = [p.score for p in found.photos]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("image", "user", "k", "code", "message"), [
    (b"", "", 5, "INVALID_ARGUMENT", "image is empty"),
    (bytes(range(256)) * 64, "", 5, "INVALID_ARGUMENT", "not a decodable image"),
    ("truncated", "", 5, "INVALID_ARGUMENT", "truncated or corrupt"),
    ("50mp", "", 5, "INVALID_ARGUMENT", "pixels"),
    (b"\0" * (25 * 1024 * 1024), "", 5, "RESOURCE_EXHAUSTED", ""),
    ("good", "", -1, "INVALID_ARGUMENT", "k must be between 1 and 100"),
    ("good", "", 10**6, "INVALID_ARGUMENT", "k must be between 1 and 100"),
])
def test_bad_recommend_requests_are_named_and_the_stack_stays_up(
        stack: dict, data_dir: Path, image: bytes | str, user: str, k: int, code: str,
        message: str) -> None:
    import io

    from PIL import Image

    good = _photo(data_dir)
    if image == "truncated":
        image = good[: len(good) // 2]
    elif image == "50mp":
        buffer = io.BytesIO()
        Image.new("1", (10_000, 5_000)).save(buffer, "PNG")
        image = buffer.getvalue()
    elif image == "good":
        image = good
    with pytest.raises(grpc.RpcError) as error:
        _recommend(stack, image, user=user, k=k)
    assert error.value.code().name == code
    assert message in (error.value.details() or "")
    assert _serving(stack["channels"]["recommender"], RECOMMENDER)
    assert len(_recommend(stack, good, k=3).hashtags) == 3


def test_feedback_with_no_usable_hashtag_is_invalid_argument(stack: dict,
                                                             data_dir: Path) -> None:
    stub = recommender_pb2_grpc.RecommenderServiceStub(stack["channels"]["recommender"])
    for request, message in (
            (recommender_pb2.FeedbackRequest(image=_photo(data_dir), user_id="u1",
                                             hashtags=["", "  ", "🙂🙂"]),
             "no usable hashtag"),
            (recommender_pb2.FeedbackRequest(image=_photo(data_dir), user_id="u1"),
             "no hashtags given"),
            (recommender_pb2.FeedbackRequest(image=_photo(data_dir), hashtags=["food"]),
             "user_id is empty"),
            (recommender_pb2.FeedbackRequest(image=b"nope", user_id="u1", hashtags=["food"]),
             "not a decodable image")):
        with pytest.raises(grpc.RpcError) as error:
            stub.Feedback(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.value.details()


@pytest.mark.parametrize("call, message", [
    ("feedback_many", "10000 hashtags; at most 100"),
    ("feedback_huge_hashtag", "characters; at most 100 are allowed"),
    ("feedback_huge_user", "user_id has 100000 characters; at most 256"),
    ("recommend_huge_user", "user_id has 100000 characters; at most 256"),
    ("recommend_control_user", "holds control characters"),
    ("retrieve_huge_hashtag", "characters; at most 100 are allowed"),
    ("update_many", "10000 hashtags; at most 100"),
    ("score_huge_user", "user_id has 100000 characters; at most 256"),
    ("similar_huge_hashtag", "characters; at most 100 are allowed"),
])
def test_oversized_input_is_refused_by_name_without_being_echoed(
        stack: dict, data_dir: Path, call: str, message: str) -> None:
    # A bad-input probe once got UNAVAILABLE here: the error details echoed the input and
    # overflowed gRPC's metadata limit.
    photo_bytes = _photo(data_dir)
    recommender = recommender_pb2_grpc.RecommenderServiceStub(stack["channels"]["recommender"])
    user = user_pb2_grpc.UserProfileServiceStub(stack["channels"]["user"])
    many, huge, long_user = [f"tag{i}" for i in range(10_000)], "x" * 1_000_000, "u" * 100_000
    calls = {
        "feedback_many": lambda: recommender.Feedback(recommender_pb2.FeedbackRequest(
            image=photo_bytes, user_id="u1", hashtags=many), timeout=30),
        "feedback_huge_hashtag": lambda: recommender.Feedback(recommender_pb2.FeedbackRequest(
            image=photo_bytes, user_id="u1", hashtags=["food", huge]), timeout=30),
        "feedback_huge_user": lambda: recommender.Feedback(recommender_pb2.FeedbackRequest(
            image=photo_bytes, user_id=long_user, hashtags=["food"]), timeout=30),
        "recommend_huge_user": lambda: _recommend(stack, photo_bytes, user=long_user),
        "recommend_control_user": lambda: _recommend(stack, photo_bytes, user="ann\x00"),
        "retrieve_huge_hashtag": lambda: recommender.Retrieve(user_pb2.RetrieveRequest(
            hashtag=huge), timeout=30),
        "update_many": lambda: user.Update(user_pb2.UserUpdateRequest(
            user_id="u1", photo=_describe(stack, photo_bytes), hashtags=many), timeout=30),
        "score_huge_user": lambda: user.Score(user_pb2.UserScoreRequest(
            photo=_describe(stack, photo_bytes), user_id=long_user), timeout=30),
        "similar_huge_hashtag": lambda: word_pb2_grpc.WordEmbeddingServiceStub(
            stack["channels"]["word"]).Similar(word_pb2.SimilarRequest(hashtag=huge),
                                               timeout=30),
    }
    with pytest.raises(grpc.RpcError) as error:
        calls[call]()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert len(error.value.details()) < 300  # named, not echoed
    assert len(_recommend(stack, photo_bytes, k=3).hashtags) == 3


def test_a_backend_down_or_late_gives_a_degraded_answer_not_an_error(
        stack: dict, data_dir: Path) -> None:
    loop = stack["loop"]

    async def black_hole() -> grpc.aio.Server:
        """Accepts every call and never answers: a backend that is late."""
        class Never(grpc.GenericRpcHandler):
            def service(self, details):
                async def hang(request, context):
                    await asyncio.sleep(3600)
                return grpc.unary_unary_rpc_method_handler(hang)

        server = grpc.aio.server(handlers=[Never()])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        server.address = f"127.0.0.1:{port}"
        return server

    late = loop.call(black_hole())
    recommender = loop.call(serve_recommender(
        "127.0.0.1", 0, stack["trained"].directory, stack["vision"].address,
        f"127.0.0.1:{free_port()}", late.address, stack["user"].address,
        backend_deadline=1.0))
    with grpc.insecure_channel(recommender.address, options=CHANNEL_OPTIONS) as channel:
        reply = recommender_pb2_grpc.RecommenderServiceStub(channel).Recommend(
            recommender_pb2.RecommendRequest(image=_photo(data_dir), user_id="u00003",
                                             k=10), timeout=60)
        assert _serving(channel, RECOMMENDER)
    assert reply.degraded and len(reply.hashtags) == 10
    reasons = " | ".join(reply.degraded_reasons)
    assert "word: unavailable" in reasons and "graph: deadline exceeded" in reasons
    assert "127.0.0.1" not in reasons  # backends by name only: addresses go to the log
    methods = {s.method for h in reply.hashtags for s in h.signals}
    assert {"knn", "mlp", "user"} <= methods and not {"word", "graph"} & methods
    loop.call(recommender.stop())
    loop.call(late.stop(0))


def test_redis_killed_mid_test_never_fails_a_request(stack: dict, data_dir: Path) -> None:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is missing: apt-get install redis-server")
    redis = RedisServer()
    redis.start()
    loop = stack["loop"]
    cache = RedisCache(redis.url, retry_after=0.5)
    client = redis_client.Redis.from_url(redis.url)  # to look inside
    vision = loop.call(serve_vision("127.0.0.1", 0, stack["model"], cache=cache))
    recommender = loop.call(serve_recommender(
        "127.0.0.1", 0, stack["trained"].directory, vision.address, stack["word"].address,
        stack["graph"].address, stack["user"].address, backend_deadline=30, cache=cache))
    stub_channel = grpc.insecure_channel(recommender.address, options=CHANNEL_OPTIONS)
    stub = recommender_pb2_grpc.RecommenderServiceStub(stub_channel)
    image = _photo(data_dir, "0000030.jpg")

    def ask() -> list[str]:
        reply = stub.Recommend(recommender_pb2.RecommendRequest(image=image, k=5), timeout=60)
        assert not reply.degraded
        return [h.hashtag for h in reply.hashtags]

    try:
        first = ask()
        for kind in ("features", "photo_scores"):  # vision's and the recommender's
            assert len(client.keys(f"hashrec:{kind}:*")) == 1, kind
        redis.kill()
        assert ask() == first  # Redis gone: computed again, same answer
        redis.start()  # back, empty
        loop.call(asyncio.sleep(0.6))  # the cache's circuit closes again
        assert ask() == first
        # and filled again: the stranger's whole answer (the photo's evidence stays in
        # this recommender's memory, so it is not fetched or written again)
        assert len(client.keys("hashrec:answer:*")) == 1
        assert ask() == first  # now from Redis
    finally:
        stub_channel.close()
        loop.call(recommender.stop())
        loop.call(vision.stop())
        redis.kill()


def test_cli_feedback_and_retrieve_print_json_and_name_errors(stack: dict, data_dir: Path,
                                                             capsys) -> None:
    import json

    from commands.cli import main

    target = stack["recommender"].address
    image = data_dir / "food" / "images" / "0000034.jpg"
    known = user_pb2_grpc.UserProfileServiceStub(stack["channels"]["user"]).Score(
        user_pb2.UserScoreRequest(photo=_describe(stack, image.read_bytes()), k=1),
        timeout=10).hashtags[0].hashtag  # a hashtag the user model knows
    assert main(["feedback", str(image), "#nothing-like-it-zz", "--user", "cli-user",
                 "--target", target]) == 1
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: no usable hashtag")
    assert main(["feedback", str(image), known, "--user", "cli-user", "--target", target]) == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == [known]
    assert main(["retrieve", known, "--user", "cli-user", "-k", "3", "--target",
                 target]) == 0
    assert len(json.loads(capsys.readouterr().out)["photos"]) == 3
    assert main(["retrieve", "zz-unknown-tag", "--target", target]) == 1
    assert capsys.readouterr().err.startswith("NOT_FOUND: ")


@pytest.mark.parametrize("mode", [[], ["--single-process"]], ids=["processes", "single"])
def test_hashrec_serve_answers_and_stops_cleanly_on_sigterm(stack: dict, data_dir: Path,
                                                            tmp_path: Path,
                                                            mode: list[str]) -> None:
    import signal
    import subprocess
    import sys
    import time

    port, metrics = free_ports_in_a_row(5), free_ports_in_a_row(5)
    # metrics on ports of its own: --port far from 50050 puts them at 9100-9104, which a
    # serve in another test worker may hold (then this one refuses to start)
    serve = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "serve", "--port", str(port), "--models",
         str(stack["trained"].directory), "--user-model", str(stack["user_dir"]),
         "--metrics-port", str(metrics), *mode],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**__import__("os").environ, "HASHREC_MODELS": str(tmp_path)})
    try:
        deadline = time.monotonic() + 120
        line = ""
        while not line.startswith("serving ") and time.monotonic() < deadline:
            line = serve.stdout.readline()
        assert line.startswith(f"serving hashrec.v1.RecommenderService on 127.0.0.1:{port}"
                               ), f"hashrec serve said {line!r} (exit {serve.poll()})"
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            for offset in range(5):  # all five services, each on its own port
                with grpc.insecure_channel(f"127.0.0.1:{port + offset}") as backend:
                    assert _serving(backend)
            reply = recommender_pb2_grpc.RecommenderServiceStub(channel).Recommend(
                recommender_pb2.RecommendRequest(image=_photo(data_dir), user_id="u00003",
                                                 k=5), timeout=60)
            assert len(reply.hashtags) == 5 and not reply.degraded, reply.degraded_reasons
            assert "user" in {s.method for h in reply.hashtags for s in h.signals}
        import urllib.request

        for offset in range(5):  # every service's metrics where --metrics-port put them
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics + offset}/metrics",
                                          timeout=10).read().decode()
            assert "hashrec_gc_pause_seconds_count" in text
        assert "/hashrec.v1.RecommenderService/Recommend" in urllib.request.urlopen(
            f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
