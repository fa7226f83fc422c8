"""The recommender's weight for the user model's answer: fitted on held-out posts (photos
scored out of fold, users by a model that never saw the post) and served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.recommender.user_side import (
    USER_MIX_GRID,
    condition_on_user,
    fit_user_mix,
    fit_user_weight,
    mix_user_answers,
)
from tests.training import pool


def test_the_fitted_user_weight_is_the_smallest_that_lets_each_side_win_where_it_knows(
) -> None:
    # Post A: the photo is right (truth 1.0 over a decoy at 0.5) and the user prefers the
    # decoy, so a weight above 0.5 turns it wrong. Post B: the photo prefers a decoy (1.0
    # over the truth's 0.75) and the user knows the truth, so a weight above 0.25 turns it
    # right. Only weights in (0.25, 0.5] get both; 0.3 is the smallest in the grid.
    vocabulary = ("truth", "decoy", "other")
    photo = np.array([[1.0, 0.5, 0.0], [0.75, 1.0, 0.0]], dtype=np.float32)
    user = [[("decoy", 1.0)], [("truth", 1.0)]]
    truth = [frozenset({"truth"})] * 2
    fit = fit_user_weight(photo, vocabulary, user, truth)
    assert fit.weight == 0.3
    assert fit.accuracy[0.3][0] == 100 and fit.accuracy[0.0][0] == 50
    assert fit.accuracy[100.0][0] == 50 and fit.posts == 2
    assert [row["weight"] for row in fit.about()["accuracy"]] == sorted(fit.accuracy)


def test_the_weight_is_chosen_on_some_posts_and_its_figures_come_from_the_others() -> None:
    """Posts A and B choose 0.3 as above; two report posts where the user alone is right
    are measured, never chosen on: with them in the choice, 100 would win."""
    vocabulary = ("truth", "decoy", "other")
    photo = np.array([[1.0, 0.5, 0.0], [0.75, 1.0, 0.0], [0.0, 1.0, 0.9],
                      [0.0, 1.0, 0.9]], dtype=np.float32)
    user = [[("decoy", 1.0)], [("truth", 1.0)], [("truth", 1.0)], [("truth", 1.0)]]
    truth = [frozenset({"truth"})] * 4
    fit = fit_user_weight(photo, vocabulary, user, truth, report=[False, False, True, True])
    assert fit.weight == 0.3 and fit.posts == 2 and fit.reported_posts == 2
    assert set(fit.reported) == {0.0, 0.3, 1.0}
    assert fit.reported[0.0][0] == 0 and fit.reported[1.0][0] == 100
    assert fit.reported[0.3][0] == 0  # the truth at 0.3 × 1, under the photo's "other" (0.9)
    chosen_on_all = fit_user_weight(photo, vocabulary, user, truth)
    assert chosen_on_all.weight != 0.3  # the report posts would have moved the choice
    assert fit.about()["reported_posts"] == 2


def test_a_hashtag_only_the_user_knows_enters_with_the_weighted_user_term() -> None:
    scores, extra = condition_on_user({"a": 0, "b": 1}, np.array([2.0, 4.0]),
                                      [("b", 0.5), ("mine", 0.25)], weight=2.0)
    assert extra == ["mine"]
    np.testing.assert_allclose(scores, [0.0, 1.0 + 2.0 * 0.5, 2.0 * 0.25])


def test_the_user_side_mixes_the_models_answer_with_the_users_habits() -> None:
    model = [("food", 1.0), ("dinner", 0.5)]
    habits = [("comida", 1.0), ("food", 0.25)]
    # u = 0.5 · model + 0.5 · habits: food 0.625, comida 0.5, dinner 0.25; best rescaled to 1
    mixed = mix_user_answers(model, habits, 0.5)
    assert [term for term, _ in mixed] == ["food", "comida", "dinner"]
    np.testing.assert_allclose([r for _, r in mixed], [1.0, 0.8, 0.4])
    assert mix_user_answers(model, habits, 1.0) == model
    assert mix_user_answers(model, habits, 0.0) == habits
    assert mix_user_answers([], [], 0.5) == []
    with pytest.raises(ValueError, match=r"share must lie in \[0, 1\]"):
        mix_user_answers(model, habits, 1.5)


def test_the_users_habits_get_a_share_where_they_know_what_the_model_does_not() -> None:
    # Posts A, B: the user model ranks a decoy first, the user's habits the truth, and the
    # photo is wrong ("other"): only a share of the habits gets them right. Post C: the
    # model is right and the habits wrong, so the habits alone (share 0) lose it. Shares
    # 0.5 and 0.75 get all three (with a weight that outvotes the photo).
    vocabulary = ("truth", "decoy", "other")
    photo = np.array([[0.0, 0.0, 1.0]] * 3, dtype=np.float32)
    model = [[("decoy", 1.0), ("truth", 0.9)], [("decoy", 1.0), ("truth", 0.9)],
             [("truth", 1.0)]]
    habits = [[("truth", 1.0)], [("truth", 1.0)], [("decoy", 1.0), ("truth", 0.5)]]
    truth = [frozenset({"truth"})] * 3
    fit = fit_user_mix(photo, vocabulary, model, habits, truth)
    assert fit.mix == 0.75 and fit.weight >= 1  # ties go to the larger share
    assert set(fit.fits) == set(USER_MIX_GRID)
    assert fit.fits[fit.mix].accuracy[fit.weight][0] == 100
    assert fit.fits[1.0].accuracy[fit.fits[1.0].weight][0] < 100  # the model alone
    about = fit.about()
    assert about["user_mix"] == fit.mix and about["user_weight"] == fit.weight
    assert [row["user_mix"] for row in about["by_mix"]] == sorted(USER_MIX_GRID)
    # where the habits add nothing, the model alone stays (ties go to the larger share)
    assert fit_user_mix(photo, vocabulary, model, model, truth).mix == 1.0


def test_fitting_without_held_out_posts_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one held-out post"):
        fit_user_weight(np.zeros((0, 2)), ("a", "b"), [], [])


def test_training_fits_the_weight_on_held_out_posts_and_the_user_service_serves_it(
        tmp_path: Path, data_dir: Path, feature_store) -> None:
    import grpc
    from hashrec.v1 import photo_pb2, user_pb2, user_pb2_grpc

    from commands.train import train_image_models
    from services.user.lookup import UserHashtagLookup
    from services.user.model import TensorParams
    from services.user.server import serve as serve_user
    from services.user.train import train_user_model
    from shared.backbone import vision_model_id
    from shared.data.readers import read_posts
    from shared.data.simulated_users import source_posts
    from shared.grpc_server import CHANNEL_OPTIONS
    from tests.servers import LoopThread

    photos = read_posts(f"food:{data_dir / 'food'}")[:240]
    images = {p.image for p in photos}
    food = [p for p in source_posts(data_dir) if p.image in images]  # users post those
    image_model = train_image_models(photos, feature_store, tmp_path / "models",
                                     methods=("frequency", "knn", "mlp"), min_count=2,
                                     folds=3, progress=False, engine=pool())
    lookup, user_dir = train_user_model(
        tmp_path / "user", feature_store, n_users=40, progress=False,
        params=TensorParams(16, 16, 4, epochs=5), sources=food,
        image_model=image_model.directory)
    fit = lookup.recommender_fit
    assert fit is not None and fit["image_model"] == image_model.directory.name
    accuracy = {row["weight"]: row["a1"] + row["a10"] for row in fit["accuracy"]}
    # Every simulated user writes two signature hashtags no photo predicts: knowing the
    # user must help, so the photo alone (weight 0) cannot be the fit.
    assert fit["user_weight"] > 0 and accuracy[fit["user_weight"]] > accuracy[0.0]
    assert fit["posts"] > 0
    assert fit["user_mix"] in USER_MIX_GRID
    assert [row["user_mix"] for row in fit["by_mix"]] == sorted(USER_MIX_GRID)
    loaded = UserHashtagLookup.load(user_dir)
    assert loaded.user_weight == fit["user_weight"] and loaded.user_mix == fit["user_mix"]
    # A model whose fit chose half the user model, half the habits, served: the answer is
    # that mix of the model's answer and the user's habits, whatever this small fit chose.
    loaded.recommender_fit = {**fit, "user_mix": 0.5}
    mixed_dir = loaded.save(tmp_path / "mixed" / user_dir.name).parent

    loop = LoopThread()
    server = loop.call(serve_user("127.0.0.1", 0, user_dir, tmp_path / "state"))
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            features = feature_store.embed_paths([food[0].image], progress=False)[0]
            photo = photo_pb2.PhotoDescription(features=features.features[0].tolist(),
                                               vision_model_version=vision_model_id())
            reply = user_pb2_grpc.UserProfileServiceStub(channel).Score(
                user_pb2.UserScoreRequest(photo=photo, user_id=lookup.user_ids[0], k=5),
                timeout=30)
        assert reply.known_user and reply.user_weight == pytest.approx(fit["user_weight"])
        mixed = loop.call(serve_user("127.0.0.1", 0, mixed_dir, tmp_path / "mixed_state"))
        try:
            with grpc.insecure_channel(mixed.address, options=CHANNEL_OPTIONS) as channel:
                mixed_reply = user_pb2_grpc.UserProfileServiceStub(channel).Score(
                    user_pb2.UserScoreRequest(photo=photo, user_id=lookup.user_ids[0], k=8),
                    timeout=30)
        finally:
            loop.call(mixed.stop())
    finally:
        loop.call(server.stop())
        loop.close()
    user = lookup.user_ids[0]
    scores, ids = loaded.top_k(features.features[:1], [user], 8)  # the depth asked
    answer = [(loaded.vocabulary[i], float(np.exp(s - scores[0, 0])))
              for i, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True)]
    expected = mix_user_answers(answer, loaded.habits([user], 8)[0], 0.5)[:8]
    assert loaded.habits([user], 8)[0]  # a known user has habits to mix in
    assert [h.hashtag for h in mixed_reply.hashtags] == [term for term, _ in expected]
    np.testing.assert_allclose([h.relative_probability for h in mixed_reply.hashtags],
                               [r for _, r in expected], rtol=1e-5)
