"""Each photo → hashtag method, and their fusion, on a small slice of real photos."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from commands.cli import main
from commands.experiments.image2tag import (
    METHODS,
    fit_fusion,
    make_methods,
    photo_metrics,
    run_image2tag,
    training_photos,
)
from services.recommender.model import Fusion
from services.vision.store import FeatureStore
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts


@pytest.fixture(scope="module")
def store(feature_store: FeatureStore) -> FeatureStore:
    return feature_store


@pytest.fixture(scope="module")
def labelled_photos(mirflickr_labelled):
    return mirflickr_labelled


@pytest.mark.parametrize("name", METHODS)
def test_each_method_scores_every_hashtag_of_every_photo(labelled_photos, name: str) -> None:
    train, test, _, vocab = labelled_photos
    (method,) = make_methods([name], seed=0)
    method.fit(train, vocab.terms)
    scores = method.scores(test)
    assert scores.shape == (len(test), len(vocab))
    assert np.isfinite(scores).all() and (scores >= 0).all()
    if name != "frequency":  # a photo-aware method ranks photos differently
        assert len({tuple(np.argsort(-row)[:5]) for row in scores}) > 1


@pytest.mark.parametrize("name", ["knn", "mlp", "word", "graph"])
def test_photo_aware_methods_beat_global_frequency(labelled_photos, name: str) -> None:
    train, test, truth, vocab = labelled_photos
    frequency, method = make_methods(["frequency", name], seed=0)
    for m in (frequency, method):
        m.fit(train, vocab.terms)
    # Measured at 49 for frequency and 66 (word) to 76 (mlp) for the others.
    assert photo_metrics(method.scores(test), truth)["R@5"] > \
        photo_metrics(frequency.scores(test), truth)["R@5"] + 10


def test_fusion_weights_follow_the_method_that_knows() -> None:
    rng = np.random.default_rng(0)
    truth = [frozenset(rng.choice(50, 3, replace=False).tolist()) for _ in range(200)]
    knows = np.zeros((200, 50), np.float32)
    for row, ids in enumerate(truth):
        knows[row, list(ids)] = 1.0
    knows += rng.random((200, 50)).astype(np.float32) * 0.5
    noise = rng.random((200, 50)).astype(np.float32)
    fusion = Fusion.fit({"noise": noise, "knows": knows}, truth)
    assert fusion.weights["knows"] > fusion.weights["noise"]
    assert photo_metrics(fusion.combine({"noise": noise, "knows": knows}), truth)["R@5"] == 100


def test_vocabulary_comes_from_training_photos_only(data_dir: Path, store: FeatureStore,
                                                    ) -> None:
    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:150]
    train = posts[:120]
    test = [replace(p, hashtags=(*p.hashtags, "onlyinthetestset")) for p in posts[120:]]
    result = run_image2tag(train, test, store, ignore=frozenset({"food"}),
                           methods=("frequency", "knn"), min_count=2, folds=3,
                           progress=False)
    assert "onlyinthetestset" not in result.vocabulary
    assert "food" not in result.vocabulary
    assert set(result.results) == {"frequency", "knn", "fusion", "learned_fusion"}
    assert set(result.results["knn"]) == {"P@1", "R@5", "A@5", "A@1", "A@10"}


def test_cli_image2tag_writes_the_table_as_json(tmp_path: Path, data_dir: Path,
                                                store: FeatureStore, monkeypatch) -> None:
    monkeypatch.setenv("HASHREC_MODELS", str(store.directory.parent.parent))
    posts = tmp_path / "posts.jsonl"
    food = read_posts(f"food:{data_dir / 'food'}")[:100]
    posts.write_text("".join(json.dumps({"image": str(p.image), "hashtags": list(p.hashtags)})
                             + "\n" for p in food))
    out = tmp_path / "image2tag.json"
    assert main(["evaluate", "image2tag", "--train", f"jsonl:{posts}", "--json", str(out),
                 "--ignore-tags", "#Food,Yummy", "--image-methods", "frequency,knn"]) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "image2tag" and report["ignored"] == ["food", "yummy"]
    assert set(report["results"]) == {"frequency", "knn", "fusion", "learned_fusion"}
    assert report["n_train"] > 0 and report["n_test"] > 0 and report["vocab"] > 0
    # InstaHash's measure beside P@1 / R@5: the kNN's hashtags lie nearer the truth in the
    # training hashtags' Word2Vec space than the one global frequency list does.
    similarity = report["instahash_similarity"]
    assert set(similarity["knn"]) == {"cos", "cos>0", "cos>0.3", "cos>0.7", "Jaccard"}
    assert similarity["knn"]["cos"] > similarity["frequency"]["cos"]


def test_the_fusion_is_fit_on_training_photos_alone(data_dir: Path, store: FeatureStore,
                                                    ) -> None:
    """The reported fusion equals one fit on the training photos' out-of-fold scores, and
    the test photos' hashtags cannot move it."""
    posts = normalize_post_hashtags(read_posts(f"food:{data_dir / 'food'}"))[:200]
    train, test = posts[:150], posts[150:]
    settings = {"methods": ("frequency", "knn", "word"), "min_count": 2, "folds": 3}
    result = run_image2tag(train, test, store, progress=False, **settings)
    photos, vocab = training_photos(train, store, frozenset(), 2, 1000, progress=False)
    alone = fit_fusion(photos, vocab.terms, settings["methods"], settings["folds"], seed=0)
    assert result.fusion_weights == alone.weights and result.fusion_mode == alone.mode
    assert sum(weight > 0 for weight in alone.weights.values()) >= 2  # a real fusion
    # Give every test photo the hashtags of another: the fusion does not notice.
    shuffled = [replace(p, hashtags=q.hashtags) for p, q in zip(test, test[::-1], strict=True)]
    again = run_image2tag(train, shuffled, store, progress=False, **settings)
    assert again.fusion_weights == result.fusion_weights



def test_fit_passes_caps_the_iterative_fits_and_keeps_their_models_shapes(
        labelled_photos, monkeypatch, caplog) -> None:
    """$HASHREC_FIT_PASSES=1: the MLP, AutoRec and DeepWalk each go over the photos once
    (their own logs say so), and answer in the shape the uncapped fits answer in."""
    import logging
    import re

    train, test, _, vocab = labelled_photos
    names = ["mlp", "autorec_masked", "graph"]
    caplog.set_level(logging.INFO)

    def fitted() -> tuple[list, str]:
        caplog.clear()
        methods = make_methods(names, seed=0)
        for method in methods:
            method.fit(train, vocab.terms)
        return methods, caplog.text

    full, full_log = fitted()
    monkeypatch.setenv("HASHREC_FIT_PASSES", "1")
    capped, logged = fitted()
    assert "mlp (sigmoid): 1 epochs" in logged and "mlp (softmax): 1 epochs" in logged
    assert "after 1 epochs" in logged  # AutoRec: its least number of updates lifted too
    assert "after 1 epochs" not in full_log
    walks = [int(re.search(r"skip-gram: (\d+) walks", text).group(1))
             for text in (full_log, logged)]
    assert walks[0] == 10 * walks[1]  # one walk from each node, not ten
    assert "'epochs': 1" in logged and "'epochs': 3" in full_log  # the skip-gram's
    for method, uncapped in zip(capped, full, strict=True):
        assert method.scores(test).shape == uncapped.scores(test).shape
    assert [a.shape for a in capped[0].layers] == [a.shape for a in full[0].layers]
    for wrong in ("0", "many"):
        monkeypatch.setenv("HASHREC_FIT_PASSES", wrong)
        with pytest.raises(ValueError, match="HASHREC_FIT_PASSES must be"):
            make_methods(["mlp"], seed=0)
