"""`hashrec evaluate served`: the served artifact on held-out photos, comparable with
`evaluate image2tag`, and refusing photos the model trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from commands.cli import main
from commands.experiments.image2tag import Community, run_image2tag
from commands.train import held_out_split, train_communities
from services.vision.store import FeatureStore
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from tests.training import pool

METHODS = ("frequency", "knn")


@pytest.fixture(scope="module")
def food_split(data_dir: Path) -> tuple[list, list]:
    return held_out_split(normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}")),
                          0)


def _train(store: FeatureStore, posts: list, out: Path, spec: str, hold_out: int | None,
           ) -> Path:
    about = {"data": [spec], "hold_out": None if hold_out is None else {"seed": hold_out}}
    return train_communities([Community("food", posts)], store, out, METHODS, folds=2,
                             progress=False, about=about, engine=pool()).directory


def test_served_equals_image2tags_learned_fusion_on_the_same_held_out_photos(
        feature_store: FeatureStore, food_split, data_dir: Path, tmp_path: Path,
        monkeypatch) -> None:
    monkeypatch.setenv("HASHREC_MODELS", str(feature_store.directory.parent.parent))
    train, test = food_split
    spec = f"food:{data_dir / 'food'}"
    model = _train(feature_store, train, tmp_path / "models", spec, hold_out=0)
    out = tmp_path / "served.json"
    assert main(["evaluate", "served", "--test", spec, "--model", str(model),
                 "--json", str(out)]) == 0
    served = json.loads(out.read_text())["results"][spec]
    reference = run_image2tag(train, test, feature_store, methods=METHODS, folds=2,
                              progress=False)
    assert served["set vocabulary"]["photos"] == reference.n_test
    for metric in ("P@1", "R@5", "A@5", "A@1", "A@10"):
        assert served["set vocabulary"][metric] == reference.results["learned_fusion"][metric]
    # Against every tag the poster wrote, recall is lower: more truth, the same top 5.
    assert served["all tags"]["R@5"] < served["set vocabulary"]["R@5"]
    # No method of this model scores outside hashtags: the vocabulary alone answers alike.
    report = json.loads(out.read_text())
    assert report["vocabulary_only"][spec] == report["results"][spec]
    assert "gate" not in report  # one photo set: nothing to gate


def test_served_refuses_a_set_the_model_trained_on_in_full(feature_store: FeatureStore,
                                                           food_split, data_dir: Path,
                                                           tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    monkeypatch.setenv("HASHREC_MODELS", str(feature_store.directory.parent.parent))
    train, test = food_split
    spec = f"food:{data_dir / 'food'}"
    model = _train(feature_store, [*train, *test], tmp_path / "models", spec, hold_out=None)
    with pytest.raises(SystemExit, match=r"trained .* in full: no photo of it is unseen"):
        main(["evaluate", "served", "--test", spec, "--model", str(model)])


def test_served_refuses_the_set_a_single_set_model_trained_on(
        feature_store: FeatureStore, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """`hashrec train --train SPEC` trains on every post of SPEC: its manifest names the
    set, and scoring its photos as held out is refused."""
    from commands.train import train_from_spec

    monkeypatch.setenv("HASHREC_MODELS", str(feature_store.directory.parent.parent))
    spec = f"food:{data_dir / 'food'}"
    models = train_from_spec(spec, tmp_path / "models", frozenset({"food"}),
                             methods=("frequency",))
    with pytest.raises(SystemExit, match=r"trained .* in full: no photo of it is unseen"):
        main(["evaluate", "served", "--test", spec, "--model", str(models.directory)])


def test_served_on_a_model_of_two_communities_reports_the_gate_and_the_named_community(
        feature_store: FeatureStore, food_split, data_dir: Path, tmp_path: Path,
        monkeypatch) -> None:
    """The same held-out photos answered twice: as the gate guesses their community, and
    posted to their own (RecommendRequest.community)."""
    monkeypatch.setenv("HASHREC_MODELS", str(feature_store.directory.parent.parent))
    food_spec, instagram_spec = f"food:{data_dir / 'food'}", \
        f"instagram:{data_dir / 'instagram'}"
    instagram, _ = held_out_split(normalize_post_hashtags(read_posts(instagram_spec))[::10],
                                  0)
    about = {"data": [food_spec, instagram_spec], "hold_out": {"seed": 0}}
    model = train_communities([Community("food", food_split[0]),
                               Community("instagram", instagram)], feature_store,
                              tmp_path / "models", METHODS, folds=2, progress=False,
                              about=about, engine=pool()).directory
    out = tmp_path / "served.json"
    assert main(["evaluate", "served", "--test", food_spec, "--model", str(model),
                 "--json", str(out), "--users", "40"]) == 0
    report = json.loads(out.read_text())
    gate, named = report["results"][food_spec], report["community_named"][food_spec]
    assert gate["set vocabulary"]["photos"] == named["set vocabulary"]["photos"] > 0
    # posted to food, the instagram methods fall silent: other answers
    assert named != gate
    # the third row: the photos a simulated user posted, routed by where they post
    derived = report["user_derived"][food_spec]["set vocabulary"]
    assert set(derived) == {"served (gate)", "served (user-derived)",
                            "served (community named)"}
    assert len({row["photos"] for row in derived.values()}) == 1
    assert 0 < derived["served (gate)"]["photos"] < gate["set vocabulary"]["photos"]


def test_a_posters_prior_comes_from_their_earlier_posts_alone(
        feature_store: FeatureStore, food_split, data_dir: Path, tmp_path: Path) -> None:
    from commands.experiments.served import poster_priors
    from services.image_models import load_image_models
    from shared.data.readers import Post

    instagram = normalize_post_hashtags(read_posts(f"instagram:{data_dir / 'instagram'}"))
    model = train_communities([Community("food", food_split[0][::4]),
                               Community("instagram", instagram[::20])], feature_store,
                              tmp_path / "models", ("frequency", "knn"), folds=2,
                              progress=False, engine=pool()).directory
    models = load_image_models(model)
    answered, food, insta = food_split[1][0], food_split[0][:2], instagram[1:9]

    def posts(user: str, photos: list) -> list[Post]:
        return [Post(id=f"{user}-{i}", image=p.image, hashtags=("x",), user=user)
                for i, p in enumerate(photos)]

    # ann posted food twice, then the photo answered, then instagram eight times: only
    # the past counts; bob posted it later; cy posted it first of all
    simulated = [*posts("ann", [*food, answered, *insta]), *posts("bob", [*insta, answered]),
                 *posts("cy", [answered, *food])]
    priors = poster_priors(models, feature_store, [answered, food_split[1][1]], simulated)
    assert list(priors) == [answered.image.resolve()]  # the first poster's, ann's
    assert priors[answered.image.resolve()][models.communities.index("food")] > 0.5
    first = poster_priors(models, feature_store, [answered], simulated[-3:])
    assert first == {}  # cy posted it before anything else: no past to route by
    # the served answer routes the photo by its poster's prior: one who posts to
    # instagram alone gets instagram's hashtags for the same food photo
    from commands.experiments.served import in_process_answer

    elsewhere = np.full(len(models.communities), 0.01, np.float32)
    elsewhere[models.communities.index("instagram")] = 0.98
    gate = in_process_answer(models, feature_store)([answered])
    routed = in_process_answer(models, feature_store,
                               posters={answered.image.resolve(): elsewhere})([answered])
    assert routed != gate
