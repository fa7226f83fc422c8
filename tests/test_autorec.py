"""InstaHash's AutoRec: the loss and ratings by hand, the intersection rule, a real slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from commands.experiments.image2tag import photo_metrics
from services.vision.model import class_names
from services.word.autorec import (
    AutoRecMethod,
    AutoRecParams,
    intersection_scores,
    rating_profiles,
    recommend,
)
from services.word.autorec_train import AutoRec, autorec_loss, train_autorec, weights_of


def test_autorec_loss_by_hand() -> None:
    # Two words, one hidden unit: V = [1, 0], μ = 0, W = [2, 0]ᵀ, b = [0, 1].
    model = AutoRec(2, 1)
    with torch.no_grad():
        model.encode.weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.encode.bias.zero_()
        model.decode.weight.copy_(torch.tensor([[2.0], [0.0]]))
        model.decode.bias.copy_(torch.tensor([0.0, 1.0]))
    # r = (1, −1): h = σ(1), r̂ = (2σ(1), 1); errors (2σ(1) − 1)² and 2² = 4, mean of two;
    # λ = 0.1 times ‖V‖² + ‖W‖² = 1 + 4.
    sigma = 1 / (1 + np.exp(-1.0))
    expected = ((2 * sigma - 1) ** 2 + 4) / 2 + 0.1 * 5
    loss = autorec_loss(model, torch.tensor([[1.0, -1.0]]), weight_decay=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ratings_are_positive_decaying_and_negative_by_hand() -> None:
    # Words 0 and 2 describe the photo; Word2Vec's expansion is 3, 1, 0 (N = 3).
    ratings = rating_profiles([[0, 2]], [[3, 1, 0]], n_words=5)
    np.testing.assert_allclose(ratings[0], [1.0, 0.5, 1.0, 0.75, -1.0])


def test_masked_training_over_the_description_columns_matches_the_full_encoder() -> None:
    """train_autorec drops the masked (always 0) hashtag columns from the encoder and puts
    λ in Adam: the network it returns answers as the paper's loss on the full encoder
    trains it (the reference loop below), with λ large enough that a wrong factor shows."""
    rng = np.random.default_rng(0)
    n_hashtags, n_words = 12, 20
    ratings = np.where(rng.random((96, n_words)) < 0.2, 1.0, -1.0).astype(np.float32)
    params = AutoRecParams(hidden=8, epochs=30, min_updates=0, batch_size=16,
                           weight_decay=0.01, masked=True, learning_rate=0.01)
    trained = train_autorec(ratings, params, n_hashtags)

    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    data = torch.from_numpy(ratings)
    inputs = data.clone()
    inputs[:, :n_hashtags] = 0.0
    reference = AutoRec(n_words, params.hidden)
    optimizer = torch.optim.Adam(reference.parameters(), lr=params.learning_rate)
    for _ in range(params.epochs):
        for batch in torch.randperm(len(data), generator=generator).split(params.batch_size):
            optimizer.zero_grad()
            autorec_loss(reference, inputs[batch], params.weight_decay,
                         targets=data[batch]).backward()
            optimizer.step()
    labels = [[13, 15], [12], [17, 18, 19]]
    description = [[14], [16, 19], []]
    ours = recommend(trained, labels, n_words, description, n_hashtags)
    theirs = recommend(weights_of(reference), labels, n_words, description, n_hashtags)
    np.testing.assert_allclose(ours, theirs, atol=2e-4)
    assert np.abs(ours - recommend(weights_of(AutoRec(n_words, params.hidden)), labels, n_words,
                                   description, n_hashtags)).max() > 0.1  # it trained


def test_the_intersection_comes_first_else_autorecs_top_five() -> None:
    autorec = np.array([[0.9, 0.8, 0.7, 0.1, 0.0, 0.2, 0.3],
                        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0]])
    word2vec = np.array([[0.0, 1.0, 0.0, 0.9, 0.0, 0.0, 0.0],   # top 2 {1, 3}: meets at 1
                         [0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 1.0]])  # top 2 {5, 6}: no overlap
    ranked = np.argsort(-intersection_scores(autorec, word2vec, depth=2, fallback=5), axis=1)
    assert ranked[0, 0] == 1  # the one hashtag both endorse
    assert sorted(ranked[1, :5]) == [0, 1, 2, 3, 4]  # AutoRec's top five


def _fit_and_swap(photos, method: AutoRecMethod) -> tuple[float, float, float, np.ndarray]:
    """(R@5 given each test photo's own labels, given another photo's labels, of global
    frequency; the scores) on MIRFlickr's content labels."""
    from commands.experiments.image2tag import make_methods
    from shared.photos import PhotoSet

    train, test, truth, vocab = photos
    method.fit(train, vocab.terms)
    scores = method.scores(test)
    assert scores.shape == (len(test), len(vocab)) and (scores >= 0).all()
    others = np.roll(np.arange(len(test)), 7)
    swapped = method.scores(PhotoSet(test.features[others], test.probabilities[others]))
    (frequency,) = make_methods(["frequency"], seed=0)
    frequency.fit(train, vocab.terms)
    return (photo_metrics(scores, truth)["R@5"], photo_metrics(swapped, truth)["R@5"],
            photo_metrics(frequency.scores(test), truth)["R@5"], scores)


# Without the Word2Vec expansion: its gensim threads make training non-deterministic.
NO_EXPANSION = {"expansion": 0, "min_updates": 1400}


def test_the_papers_autorec_ranks_alike_whatever_the_labels(mirflickr_labelled) -> None:
    """Trained on whole profiles, fed labels alone: the finding the module docstring
    reports (measured 49.6 R@5 with the photo's own labels, 49.1 with another's: global
    frequency's 49.2, the prior)."""
    own, swapped, frequency, _ = _fit_and_swap(mirflickr_labelled, AutoRecMethod(
        class_names(), "autorec", AutoRecParams(**NO_EXPANSION)))
    assert abs(own - swapped) < 3 and abs(own - frequency) < 3


@pytest.mark.parametrize("rule", ["autorec", "intersection"])
def test_masked_autorec_reads_each_photos_labels_and_round_trips(mirflickr_labelled,
                                                                 rule: str,
                                                                 tmp_path: Path) -> None:
    """Trained on the input it will get, AutoRec ranks a photo's labels better given its
    own machine labels than another photo's, and better than the prior (measured 67.9
    against 38.2 swapped and 49.2 for frequency)."""
    from shared.artifacts import ArtifactReader, ArtifactWriter

    method = AutoRecMethod(class_names(), rule, AutoRecParams(masked=True, **NO_EXPANSION),
                           name=f"masked_{rule}")
    own, swapped, frequency, scores = _fit_and_swap(mirflickr_labelled, method)
    assert own > swapped + 15 and own > frequency + 10
    writer = ArtifactWriter(tmp_path)
    method.save(writer)
    writer.close({})
    loaded = AutoRecMethod.load(ArtifactReader(tmp_path), class_names(), method.name)
    np.testing.assert_array_equal(loaded.scores(mirflickr_labelled[1]), scores)


def test_the_served_numpy_network_answers_as_the_torch_module() -> None:
    """r̂ = W σ(V r + μ) + b in numpy (what the word service runs) against the module that
    trains it, on random weights and ratings."""
    torch.manual_seed(0)
    module = AutoRec(30, 7)
    ratings = np.random.default_rng(0).choice([-1.0, 0.0, 1.0], size=(5, 30)).astype(
        np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(ratings)).numpy()
    np.testing.assert_allclose(weights_of(module)(ratings), expected, rtol=1e-5, atol=1e-6)
