"""Fusions and gates of the photo methods: the learned fusion on a real slice, community
gating, and where hashtags from outside the vocabulary are placed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from commands.experiments.image2tag import make_methods, out_of_fold_scores, photo_metrics
from services.recommender.model import (
    CommunityGate,
    Fusion,
    GatedMethod,
    RankFusion,
    outside_candidates,
)
from shared.artifacts import ArtifactReader, ArtifactWriter
from shared.photos import PhotoSet


def test_an_outside_hashtag_takes_the_fused_score_of_the_hashtag_scored_alike() -> None:
    # The semantic method scores the vocabulary (0.9, 0.5, 0.1); the fusion ranks it
    # (1, 3, 2): it trusts the semantic method's second choice most. Outside hashtags
    # scored 0.6 and 0.05 sit nearest 0.5 and 0.1: they take fused 3 and 2 (just under).
    fused = np.array([1.0, 3.0, 2.0])
    terms, scores = outside_candidates(
        {"semantic": np.array([0.9, 0.5, 0.1])},
        {"semantic": (("sunset", "haze", "tea"), np.array([0.6, 0.05, 0.7]))}, fused,
        {"tea": 0, "cat": 1, "dog": 2}, neighbours=1)
    assert terms == ("sunset", "haze")  # "tea" is in the vocabulary already
    assert scores[0] == pytest.approx(3.0) and scores[0] < 3.0
    assert scores[1] == pytest.approx(2.0) and scores[1] < 2.0
    # With depth 1 only one that would reach the top spot is kept: none (3.0 is taken).
    assert outside_candidates({"semantic": np.array([0.9, 0.5, 0.1])},
                              {"semantic": (("sunset",), np.array([0.6]))}, fused, {},
                              depth=1, neighbours=1)[0] == ()


def test_the_learned_fusion_ranks_as_well_as_the_best_method_and_round_trips(
        mirflickr_labelled, tmp_path: Path) -> None:
    train, test, truth, vocab = mirflickr_labelled
    names = ["frequency", "knn", "mlp"]
    scores = out_of_fold_scores(train, vocab.terms, names, folds=3, seed=0)
    ranker = RankFusion.fit(scores, [frozenset(ids) for ids in train.hashtags], seed=0)
    fitted = make_methods(names, seed=0)
    test_scores = {}
    for method in fitted:
        method.fit(train, vocab.terms)
        test_scores[method.name] = method.scores(test)
    best = max(photo_metrics(s, truth)["R@5"] for s in test_scores.values())
    learned = ranker.combine(test_scores)
    # Measured: knn 74.0, mlp 76.5, learned 77.6 R@5.
    assert photo_metrics(learned, truth)["R@5"] >= best - 1.0
    assert set(ranker.weights) == set(names) and sum(ranker.weights.values()) > 0.99
    writer = ArtifactWriter(tmp_path)
    ranker.save(writer)
    writer.close({})
    np.testing.assert_array_equal(RankFusion.load(ArtifactReader(tmp_path)).combine(
        test_scores), learned)
    with pytest.raises(KeyError, match="needs every method; missing"):
        ranker.combine({"knn": test_scores["knn"]})


def test_a_gated_method_mixes_each_communitys_own_method_by_the_gate(
        mirflickr_labelled, feature_store, data_dir: Path, tmp_path: Path) -> None:
    """Community 0: food photos with their tags; community 1: MIRFlickr photos with their
    content labels. The gate tells the two apart on photos it never saw, and a photo's
    scores are the gate-weighted mix of each community's own method."""
    from commands.experiments.image2tag import Community, community_photos
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    flickr_train, flickr_test, _, labels = mirflickr_labelled
    food = [p for p in normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))
            if p.image is not None][:300]
    photos, terms, _ = community_photos([Community("food", food[:240])], feature_store, 3,
                                        1000, progress=False)
    offset = len(terms)
    both = PhotoSet(np.vstack([photos.features, flickr_train.features]),
                    np.vstack([photos.probabilities, flickr_train.probabilities]),
                    [*photos.hashtags, *([i + offset for i in ids]
                                         for ids in flickr_train.hashtags)],
                    np.array([0] * len(photos) + [1] * len(flickr_train)))
    vocabulary = (*terms, *labels.terms)
    gated = make_methods(["frequency"], seed=0, communities=2)[0]
    assert isinstance(gated, GatedMethod)
    gated.fit(both, vocabulary)
    food_test, _, _ = community_photos([Community("food", food[240:])], feature_store, 1,
                                       1000, progress=False)
    assert (gated.gate(flickr_test.features).argmax(axis=1) == 1).mean() > 0.85
    assert (gated.gate(food_test.features).argmax(axis=1) == 0).mean() > 0.85
    # Gated frequency is the community prior: mostly food tags for a food photo.
    top = np.argsort(-gated.scores(food_test), axis=1)[:, :5]
    assert (top < offset).mean() > 0.8
    weights = gated.gate(flickr_test.features)
    expected = sum(weights[:, c:c + 1] * (m.prior / m.prior.max())
                   for c, m in enumerate(gated.inner))
    np.testing.assert_allclose(gated.scores(flickr_test), expected, rtol=1e-5, atol=1e-7)
    writer = ArtifactWriter(tmp_path)
    gated.save(writer)
    writer.close({"methods": ["frequency"]})
    from services.recommender.model import FrequencyMethod

    loaded = GatedMethod.load(ArtifactReader(tmp_path), "frequency", FrequencyMethod.load)
    np.testing.assert_allclose(loaded.scores(flickr_test), gated.scores(flickr_test))


def test_every_candidate_of_the_learned_fusion_outranks_every_hashtag_no_method_proposed(
        ) -> None:
    """A vocabulary far larger than the candidates (RANK_DEPTH of each method), as on the
    served model: the ranker's raw outputs are mostly negative, so without the shift
    above 0 a hashtag no method proposed (score 0) would outrank them."""
    rng = np.random.default_rng(5)
    n, vocabulary = 240, 400
    truth = [frozenset(rng.choice(vocabulary, 3, replace=False).tolist()) for _ in range(n)]
    scores = {}
    for method, noise in (("a", 0.5), ("b", 1.0), ("c", 2.0)):
        signal = np.zeros((n, vocabulary), np.float32)
        for row, gold in enumerate(truth):
            signal[row, list(gold)] = 1.0
        scores[method] = np.abs(signal + noise * rng.random((n, vocabulary))).astype(
            np.float32)
    fusion = RankFusion.fit(scores, truth, depth=8)
    combined = fusion.combine(scores)
    candidates, _ = fusion._features(scores)
    for row, ids in enumerate(candidates):
        assert (combined[row, ids] > 0).all()
        outside = np.setdiff1d(np.arange(vocabulary), ids)
        assert (combined[row, outside] == 0).all()
        assert set(np.argsort(-combined[row])[:len(ids)].tolist()) == set(ids.tolist())


def test_the_learned_fusion_describes_photos_a_chunk_at_a_time_as_it_would_all_at_once(
        monkeypatch) -> None:
    """The candidates' features are made a few photos at a time (the driver's memory);
    a photo's features depend on its own scores alone, so chunks change nothing."""
    import services.recommender.model as model

    rng = np.random.default_rng(6)
    scores = {m: rng.random((300, 120)).astype(np.float32) for m in ("a", "b", "c")}
    fusion = RankFusion(("a", "b", "c"), depth=10)
    monkeypatch.setattr(model, "FEATURE_CHUNK", 1000)
    candidates, whole = fusion._features(scores)
    monkeypatch.setattr(model, "FEATURE_CHUNK", 7)  # 300 photos in 43 chunks, the last short
    chunked_candidates, chunked = fusion._features(scores)
    np.testing.assert_array_equal(chunked, whole)
    assert len(chunked_candidates) == len(candidates) == 300
    assert all(np.array_equal(a, b) for a, b in zip(chunked_candidates, candidates,
                                                     strict=True))


def test_the_linear_fusion_ranks_a_chunk_of_photos_at_a_time_to_the_same_weights(
        monkeypatch, caplog) -> None:
    """Fusion.fit's 252 trials each fuse and rank every photo: FEATURE_CHUNK photos at a
    time, the R@5 of the whole the chunks' means averaged, the weights found the same."""
    import logging

    import services.recommender.model as model
    from shared.eval.metrics import recall_at_k, top_k

    rng = np.random.default_rng(7)
    truth = [frozenset(rng.choice(80, rng.integers(1, 4), replace=False).tolist())
             for _ in range(300)]
    scores = {}
    for number, name in enumerate(("a", "b", "c")):
        part = rng.random((300, 80)).astype(np.float32) * (rng.random((300, 80)) < 0.1)
        for row, gold in enumerate(truth):  # each method knows a little more of the truth
            part[row, list(gold)] += rng.random() * 0.4 * number
        scores[name] = part
    seen = []

    def r_at_5(fused: np.ndarray, gold) -> float:
        seen.append(len(fused))
        return recall_at_k(top_k(fused, 5), gold, 5)

    def fit_logging_its_r_at_5(chunk: int) -> tuple[Fusion, str]:
        monkeypatch.setattr(model, "FEATURE_CHUNK", chunk)
        with caplog.at_level(logging.INFO, logger=model.__name__):
            caplog.clear()
            fusion = Fusion.fit(scores, truth, r_at_5)
        return fusion, caplog.records[-1].getMessage().rsplit("R@5", 1)[1]

    whole, whole_r5 = fit_logging_its_r_at_5(1000)
    seen.clear()
    chunked, chunked_r5 = fit_logging_its_r_at_5(7)  # 300 photos: 43 chunks, the last short
    assert max(seen) == 7 and (chunked.mode, chunked.weights) == (whole.mode, whole.weights)
    assert len(set(whole.weights.values())) > 1  # the search moved off its start
    # chunks of 200 and 100 photos: their means weighted by size make the whole's mean
    assert fit_logging_its_r_at_5(200)[1] == chunked_r5 == whole_r5


def test_a_gate_fit_again_on_the_same_photos_with_another_strength_is_fit_anew() -> None:
    # The gate is cached by its training photos so a fold's methods share one; a cache that
    # ignored the strength answered bench/gate.py's whole grid with the first fit.
    rng = np.random.default_rng(0)
    communities = np.repeat([0, 1], 40)
    features = rng.normal(size=(80, 8)).astype(np.float32) + communities[:, None]
    photos = PhotoSet(features, np.zeros((80, 3), np.float32), communities=communities)
    weak, strong = CommunityGate.fit(photos, 0.0001), CommunityGate.fit(photos, 10.0)
    assert CommunityGate.fit(photos, 0.0001) is weak
    assert np.abs(strong.weight).sum() > 10 * np.abs(weak.weight).sum()
