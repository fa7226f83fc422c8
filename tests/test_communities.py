"""A model of several communities (photo sets), served: every service mixes each
community's method by the gate's guess, or, when the request names the community, by that
community alone (issue #28 item 1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
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

from services.gateway.server import Settings
from services.recommender.model import normalized_rows
from shared.grpc_server import CHANNEL_OPTIONS
from shared.scoring import photo_set
from tests.servers import start_gateway, stop_gateway
from tests.training import pool


def _photo(data_dir: Path) -> bytes:
    return (data_dir / "food" / "images" / "0000008.jpg").read_bytes()  # a cheeseburger


@pytest.fixture(scope="module")
def served(stack: dict, data_dir: Path, feature_store,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """80 food photos and every 20th Instagram photo as two communities; word, graph and
    the recommender over them (vision from the stack)."""
    from commands.experiments.image2tag import Community
    from commands.train import train_communities
    from services.graph.server import serve as serve_graph
    from services.recommender.server import serve as serve_recommender
    from services.word.server import serve as serve_word
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    food = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:80]
    instagram = normalize_post_hashtags(
        read_posts(f"instagram:{data_dir / 'instagram'}"))[::20]
    trained = train_communities(
        [Community("food", food), Community("instagram", instagram)],
        feature_store, tmp_path_factory.mktemp("communities"),
        ("frequency", "knn", "word", "graph"), min_count=2, folds=2, progress=False,
        engine=pool())
    loop = stack["loop"]
    word = loop.call(serve_word("127.0.0.1", 0, trained.directory))
    graph = loop.call(serve_graph("127.0.0.1", 0, trained.directory))
    recommender = loop.call(serve_recommender(
        "127.0.0.1", 0, trained.directory, stack["vision"].address, word.address,
        graph.address, backend_deadline=30))
    channels = {name: grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
                for name, server in (("word", word), ("graph", graph),
                                     ("recommender", recommender))}
    yield {"trained": trained, "channels": channels, "recommender": recommender,
           "word": word, "graph": graph, "food_dir": data_dir / "food"}
    for channel in channels.values():
        channel.close()
    for server in (recommender, graph, word):
        loop.call(server.stop())


def _recommend(served: dict, community: str = "", k: int = 10,
               ) -> recommender_pb2.RecommendResponse:
    return recommender_pb2_grpc.RecommenderServiceStub(
        served["channels"]["recommender"]).Recommend(recommender_pb2.RecommendRequest(
            image=served["image"], community=community, k=k), timeout=60)


@pytest.fixture(scope="module", autouse=True)
def _image(served: dict, data_dir: Path) -> None:
    served["image"] = _photo(data_dir)


def _describe(stack: dict, image: bytes) -> photo_pb2.PhotoDescription:
    reply = vision_pb2_grpc.VisionServiceStub(stack["channels"]["vision"]).Embed(
        vision_pb2.EmbedRequest(image=image, top_labels=5), timeout=60)
    return photo_pb2.PhotoDescription(features=reply.features, labels=reply.labels,
                                      vision_model_version=reply.model_version)


def test_a_model_of_several_communities_serves_like_the_default(
        served: dict) -> None:
    """`hashrec train`'s default gates each method over photo sets (communities): the word,
    graph and recommender services must serve that shape too, Similar searching every
    community's word space."""
    reply = _recommend(served, k=5)
    assert not reply.degraded, reply.degraded_reasons
    assert len(reply.hashtags) == 5
    assert {"knn", "word", "graph"} <= {s.method for h in reply.hashtags for s in h.signals}
    assert reply.community_from == "photo"
    shares = {c.name: c.weight for c in reply.communities}
    assert set(shares) == {"food", "instagram"} and abs(sum(shares.values()) - 1) < 1e-3
    similar = word_pb2_grpc.WordEmbeddingServiceStub(served["channels"]["word"]).Similar(
        word_pb2.SimilarRequest(hashtag="food", k=5), timeout=10)
    assert len(similar.hashtags) == 5
    assert "food" not in [h.hashtag for h in similar.hashtags]


def test_the_communities_rpc_names_the_models_photo_sets(served: dict) -> None:
    reply = recommender_pb2_grpc.RecommenderServiceStub(
        served["channels"]["recommender"]).Communities(recommender_pb2.CommunitiesRequest(),
                                                       timeout=10)
    assert list(reply.names) == ["food", "instagram"]
    assert reply.model_version == served["trained"].version


@pytest.mark.parametrize("backend", ["word", "graph"])
def test_a_scorer_given_a_community_scores_as_that_communitys_method_alone(
        served: dict, stack: dict, backend: str) -> None:
    description = _describe(stack, served["image"])
    stub = (word_pb2_grpc.WordEmbeddingServiceStub if backend == "word"
            else graph_pb2_grpc.GraphEmbeddingServiceStub)(served["channels"][backend])
    gated = served["trained"].methods[backend]
    photos = photo_set(description)
    for community in range(2):
        weights = [float(c == community) for c in range(2)]
        reply = stub.Score(photo_pb2.ScoreRequest(photo=description,
                                                  community_weights=weights), timeout=30)
        expected = normalized_rows(gated.inner[community].scores(photos))[0]
        np.testing.assert_allclose(reply.methods[0].scores, expected, rtol=1e-5, atol=1e-6)
    guessed = stub.Score(photo_pb2.ScoreRequest(photo=description), timeout=30)
    np.testing.assert_allclose(guessed.methods[0].scores, gated.scores(photos)[0],
                               rtol=1e-5, atol=1e-6)


def test_a_named_community_routes_every_method_and_is_cached_apart(served: dict) -> None:
    auto = _recommend(served)
    food = _recommend(served, "food")
    instagram = _recommend(served, "instagram")
    assert food.community_from == instagram.community_from == "request"
    assert {c.name: c.weight for c in food.communities} == {"food": 1.0, "instagram": 0.0}
    assert not food.degraded and not instagram.degraded
    ranked = {name: [h.hashtag for h in reply.hashtags]
              for name, reply in (("auto", auto), ("food", food), ("instagram", instagram))}
    assert ranked["food"] != ranked["instagram"]
    # the recommender's own methods speak for instagram's photos alone: the frequency
    # signal's score is instagram's prior (divided by its best), not the mix's
    local = served["recommender"].servicer.models.methods["frequency"]
    prior = normalized_rows(local.inner[1].scores(photo_set(_describe_from(served))))[0]
    index = {term: row for row, term in enumerate(served["trained"].vocabulary)}
    signals = {h.hashtag: s.score for h in instagram.hashtags for s in h.signals
               if s.method == "frequency"}
    assert signals
    for hashtag, score in signals.items():
        assert score == pytest.approx(prior[index[hashtag]], abs=1e-4), hashtag
    # asked again, each comes back the same: the cache keeps communities apart
    assert [h.hashtag for h in _recommend(served, "food").hashtags] == ranked["food"]
    assert [h.hashtag for h in _recommend(served).hashtags] == ranked["auto"]


def _describe_from(served: dict) -> photo_pb2.PhotoDescription:
    prepared = next(iter(served["recommender"].servicer.prepared.values()))
    return prepared.description


def test_an_unknown_community_or_a_wrong_mix_is_refused_naming_the_choices(
        served: dict, stack: dict) -> None:
    with pytest.raises(grpc.RpcError) as error:
        _recommend(served, "tumblr")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tumblr" in error.value.details() and "'food', 'instagram'" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:  # a caller's long text is not echoed whole
        _recommend(served, "x" * 10_000)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000 characters" in error.value.details() and len(error.value.details()) < 300
    description = _describe(stack, served["image"])
    stub = word_pb2_grpc.WordEmbeddingServiceStub(served["channels"]["word"])
    for weights, words in (([1.0, 0.0, 0.0], "holds 3 weights"),
                           ([float("nan"), 1.0], "finite"), ([0.0, 0.0], "not all 0")):
        with pytest.raises(grpc.RpcError) as error:
            stub.Score(photo_pb2.ScoreRequest(photo=description, community_weights=weights),
                       timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in error.value.details()


@pytest.fixture(scope="module")
def gateway(served: dict, stack: dict, data_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, url = start_gateway(stack["loop"], Settings(
        recommender=served["recommender"].address, photo_root=data_dir,
        accounts_path=tmp_path_factory.mktemp("accounts") / "accounts.sqlite"))
    yield url
    stop_gateway(stack["loop"], server)


def test_the_gateway_offers_the_communities_and_passes_the_choice_on(
        served: dict, gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=120) as client:
        assert client.get("/api/config").json()["communities"] == ["food", "instagram"]
        files = {"image": ("photo.jpg", served["image"], "image/jpeg")}
        answer = client.post("/api/recommend", files=files,
                             data={"community": "instagram"}).json()
        assert answer["community_from"] == "request"
        assert {c["name"]: c["weight"] for c in answer["communities"]} == \
            {"food": 0.0, "instagram": 1.0}
        expected = [h.hashtag for h in _recommend(served, "instagram", k=10).hashtags]
        assert [h["hashtag"] for h in answer["hashtags"]] == expected
        refused = client.post("/api/recommend", files=files, data={"community": "x" * 65})
        assert refused.status_code == 400 and "community" in refused.json()["message"]
        unknown = client.post("/api/recommend", files=files, data={"community": "tumblr"})
        assert unknown.status_code == 400 and "tumblr" in unknown.json()["message"]


def test_on_the_page_a_person_says_where_they_post_and_gets_that_communitys_hashtags(
        served: dict, gateway: str, data_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.test_page import ARGS, CHROMIUM, OUT, WAIT

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"{gateway}/")
        expect(page.locator("#community-row")).to_be_visible()
        assert page.locator("#community option").all_text_contents() == [
            "auto: read from the photo", "a food blog", "Instagram"]
        page.set_input_files("#file", str(data_dir / "food" / "images" / "0000008.jpg"))
        expect(page.locator("#routed")).to_contain_text("looks like one posted to",
                                                        timeout=WAIT)
        page.select_option("#community", "instagram")
        expect(page.locator("#routed")).to_contain_text(
            "as people post them on Instagram", timeout=WAIT)
        chips = page.locator("#chips .chip").evaluate_all(
            "els => els.map(e => e.dataset.hashtag)")
        assert chips == [h.hashtag for h in _recommend(served, "instagram", k=15).hashtags]
        OUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUT / "page_community.png"), full_page=True)
        browser.close()
    assert not problems, problems


def test_where_users_post_counts_each_post_by_the_gates_guess(served: dict,
                                                              feature_store) -> None:
    from services.user.train import where_users_post
    from shared.data.readers import Post

    photos = sorted((Path(served["food_dir"]) / "images").glob("*.jpg"))[:4]
    embedding, _ = feature_store.embed_paths(photos, progress=False)
    posts = [Post(id=f"p{i}", image=path, hashtags=("food",), user="eater" if i < 3
                  else "other") for i, path in enumerate(photos)]
    features = {post.id: embedding.features[i] for i, post in enumerate(posts)}
    counts = where_users_post(posts, features, served["trained"].directory)
    assert set(counts) == {"eater", "other"}
    assert sum(counts["eater"].values()) == pytest.approx(3)
    assert sum(counts["other"].values()) == pytest.approx(1)
    assert counts["eater"]["food"] > counts["eater"].get("instagram", 0)  # food photos


@pytest.fixture()
def with_users(served: dict, stack: dict, tmp_path: Path) -> Iterator[dict]:
    """A user service (the stack's user model, fresh state) behind a recommender of the
    two-community model."""
    from services.recommender.server import serve as serve_recommender
    from services.user.server import serve as serve_user

    loop, state = stack["loop"], tmp_path / "state"
    # a snapshot after 3 posts: a restart reads the counts from a snapshot and a record
    user = loop.call(serve_user("127.0.0.1", 0, stack["user_dir"], state, snapshot_every=3))
    recommender = loop.call(serve_recommender(
        "127.0.0.1", 0, served["trained"].directory, stack["vision"].address,
        served["word"].address, served["graph"].address, user.address,
        backend_deadline=30))
    running = {"user": user, "recommender": recommender, "state": state}
    yield running
    loop.call(running["recommender"].stop())
    loop.call(running["user"].stop())


def test_a_users_posts_by_community_route_their_next_photo_and_survive_a_restart(
        served: dict, stack: dict, with_users: dict, tmp_path: Path, capsys) -> None:
    from services.user.lookup import UserHashtagLookup
    from services.user.server import serve as serve_user

    hashtags = list(UserHashtagLookup.load(stack["user_dir"]).vocabulary[:2])
    image = served["image"]
    with grpc.insecure_channel(with_users["recommender"].address,
                               options=CHANNEL_OPTIONS) as channel:
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
        stranger = stub.Recommend(recommender_pb2.RecommendRequest(
            image=image, user_id="local:new", k=10), timeout=60)
        assert stranger.community_from == "photo"  # no posts yet: the gate alone
        for _ in range(4):
            stub.Feedback(recommender_pb2.FeedbackRequest(
                image=image, user_id="local:poster", hashtags=hashtags,
                community="instagram"), timeout=60)
        known = stub.Recommend(recommender_pb2.RecommendRequest(
            image=image, user_id="local:poster", k=10), timeout=60)
    assert known.community_from == "user"
    gate = {c.name: c.weight for c in stranger.communities}
    routed = {c.name: c.weight for c in known.communities}
    # P(c | x, u) ∝ P(c | x) · (n_c + 1) / (n + 2), with 4 posts to instagram
    expected = gate["instagram"] * 0.83 / (gate["instagram"] * 0.83 + gate["food"] * 0.17)
    assert routed["instagram"] == pytest.approx(expected, abs=0.01)
    assert routed["instagram"] > gate["instagram"]
    # the counts are acknowledged writes: a restarted user service still has them
    loop = stack["loop"]
    loop.call(with_users["user"].stop())
    with grpc.insecure_channel(with_users["recommender"].address,
                               options=CHANNEL_OPTIONS) as channel:
        alone = recommender_pb2_grpc.RecommenderServiceStub(channel).Recommend(
            recommender_pb2.RecommendRequest(image=image, user_id="local:poster", k=10),
            timeout=60)
    # the user service down: routed by the gate alone, and the answer says why
    assert alone.degraded and alone.community_from == "photo"
    assert "user communities: unavailable" in alone.degraded_reasons
    # and `hashrec recommend` says why, not only that it is degraded
    from commands.cli import main

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image)
    assert main(["recommend", str(photo), "--target", with_users["recommender"].address,
                 "--user", "local:poster"]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert said.startswith("model ") and "(degraded: " in said
    assert "user communities: unavailable" in said
    with_users["user"] = loop.call(serve_user("127.0.0.1", with_users["user"].port,
                                              stack["user_dir"], with_users["state"]))
    with grpc.insecure_channel(with_users["user"].address,
                               options=CHANNEL_OPTIONS) as channel:
        posts = user_pb2_grpc.UserProfileServiceStub(channel).Communities(
            user_pb2.UserCommunitiesRequest(user_id="local:poster"), timeout=10).posts
    assert dict(posts) == {"instagram": pytest.approx(4.0)}


def test_a_known_users_answer_for_a_photo_seen_before_is_one_call_to_the_user_service(
        served: dict, stack: dict, with_users: dict) -> None:
    """Its Score reply says where the user posts: no Communities call before it."""
    from services.user.lookup import UserHashtagLookup

    hashtags = list(UserHashtagLookup.load(stack["user_dir"]).vocabulary[:2])
    registry = with_users["user"].registry

    def calls() -> dict[str, float]:
        return {method: registry.get_sample_value("hashrec_grpc_requests_total", {
            "method": f"/hashrec.v1.UserProfileService/{method}", "code": "OK"}) or 0.0
            for method in ("Score", "Communities")}

    with grpc.insecure_channel(with_users["recommender"].address,
                               options=CHANNEL_OPTIONS) as channel:
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
        for _ in range(3):
            stub.Feedback(recommender_pb2.FeedbackRequest(
                image=served["image"], user_id="local:once", hashtags=hashtags,
                community="food"), timeout=60)
        before = calls()
        first = stub.Recommend(recommender_pb2.RecommendRequest(
            image=served["image"], user_id="local:once", k=10), timeout=60)
        between = calls()
        again = stub.Recommend(recommender_pb2.RecommendRequest(
            image=served["image"], user_id="local:once", k=10), timeout=60)
        after = calls()
    # a photo new to the recommender: where the user posts routes it before the user can
    # score it (two calls); described once, the Score reply brings both (one call)
    assert (between["Communities"] - before["Communities"],
            between["Score"] - before["Score"]) == (1, 1)
    assert (after["Communities"] - between["Communities"],
            after["Score"] - between["Score"]) == (0, 1)
    assert first.community_from == again.community_from == "user"
    assert [h.hashtag for h in first.hashtags] == [h.hashtag for h in again.hashtags]
    assert not first.degraded and not again.degraded


def test_a_journaled_posts_communities_are_counted_again_on_replay_and_in_a_snapshot(
        stack: dict, tmp_path: Path) -> None:
    """What a kill leaves (the journal) and what a snapshot keeps both hold the counts."""
    from services.user.journal import UpdateJournal
    from services.user.lookup import UserHashtagLookup

    trained = UserHashtagLookup.load(stack["user_dir"])
    journal = UpdateJournal(tmp_path / "version")
    features = np.ones(trained.projection.shape[0], np.float32)
    hashtags = trained.vocabulary[:1]
    journal.append("local:a", hashtags, features, communities={"food": 0.75, "instagram": 0.25})
    journal.append("local:a", hashtags, features, communities={"food": 1.0})
    expected = {"food": 1.75, "instagram": 0.25}
    replayed = UserHashtagLookup.load(stack["user_dir"])
    UpdateJournal(tmp_path / "version").recover(replayed)  # the records alone
    assert replayed.communities.posts("local:a") == expected
    journal.snapshot(replayed)
    restored = UserHashtagLookup.load(stack["user_dir"])
    UpdateJournal(tmp_path / "version").recover(restored)  # the snapshot alone
    assert restored.communities.posts("local:a") == expected


def test_a_named_community_is_ranked_by_its_own_learned_fusion(served: dict,
                                                               stack: dict) -> None:
    """Each community's learned fusion is fit on its own photos scored as its own (what a
    request naming it gets); the served answer is the artifact's own ranking."""
    trained = served["trained"]
    assert set(trained.community_rankers) == {"food", "instagram"}
    photos = photo_set(_describe(stack, served["image"]))
    for community in ("food", "instagram"):
        fused, _ = trained.scores(photos, community)
        expected = [trained.vocabulary[i] for i in np.argsort(-fused[0], kind="stable")[:10]]
        served_answer = [h.hashtag for h in _recommend(served, community).hashtags]
        assert served_answer == expected, community
    own = trained.community_rankers["food"].combine(
        {m: method.scores(photos.routed(np.array([1.0, 0.0], np.float32)))
         for m, method in trained.methods.items()})
    np.testing.assert_allclose(trained.scores(photos, "food")[0], own)


def test_hashrec_feedback_counts_the_named_community(stack: dict, with_users: dict,
                                                     data_dir: Path, capsys) -> None:
    from commands.cli import main
    from services.user.lookup import UserHashtagLookup

    hashtag = UserHashtagLookup.load(stack["user_dir"]).vocabulary[0]
    assert main(["feedback", str(data_dir / "food" / "images" / "0000008.jpg"), hashtag,
                 "--user", "local:cli", "--community", "instagram",
                 "--target", with_users["recommender"].address]) == 0
    with grpc.insecure_channel(with_users["user"].address,
                               options=CHANNEL_OPTIONS) as channel:
        posts = user_pb2_grpc.UserProfileServiceStub(channel).Communities(
            user_pb2.UserCommunitiesRequest(user_id="local:cli"), timeout=10).posts
    assert dict(posts) == {"instagram": pytest.approx(1.0)}
