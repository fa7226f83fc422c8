"""Content kNN votes for the user models, and nearest hashtags over several word spaces."""

from __future__ import annotations

import numpy as np
import pytest

from services.word.model import SimilarAcrossSpaces
from shared.embeddings import TermVectors
from shared.eval.content import as_distribution, knn_vote_scores


def test_the_k_nearest_posts_vote_their_hashtags_by_cosine_similarity() -> None:
    train = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cosines to [1, 0]: 1, 0, 1/√2
    hashtags = [[0], [1], [0, 1]]
    scores = knn_vote_scores(train, hashtags, np.array([[1.0, 0.0], [-1.0, 0.0]]), 2, k=2)
    # The first: posts 0 and 2 are nearest; post 1 (cosine 0) is not among the 2.
    np.testing.assert_allclose(scores[0], [1 + 2 ** -0.5, 2 ** -0.5], atol=1e-6)
    # The second: every neighbour points away (cosines ≤ 0), so none votes.
    np.testing.assert_allclose(scores[1], [0.0, 0.0])


def test_leave_one_out_votes_never_count_the_post_itself() -> None:
    # Posts 0 and 1 point the same way; post 2 elsewhere. With k = 1, post 0's only
    # neighbour is post 1 (never itself), and so on.
    train = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    scores = knn_vote_scores(train, [[0], [1], [2]], None, 3, k=1)
    np.testing.assert_allclose(scores, [[0, 1, 0], [1, 0, 0], [0, 0, 0]], atol=1e-6)
    # Asked about the same rows as new posts, each finds itself first.
    np.testing.assert_allclose(knn_vote_scores(train, [[0], [1], [2]], train, 3, k=1)[2],
                               [0, 0, 1], atol=1e-6)


def test_scores_become_distributions_and_empty_rows_stay_empty() -> None:
    np.testing.assert_allclose(as_distribution(np.array([[1.0, 3.0], [0.0, 0.0]])),
                               [[0.25, 0.75], [0.0, 0.0]])


def test_similar_hashtags_search_every_space_and_keep_each_neighbours_best() -> None:
    first = TermVectors(("a", "b", "c"), np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    second = TermVectors(("a", "c", "d"), np.array([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0]]))
    similar = SimilarAcrossSpaces([first, second], ("a", "b", "c", "d"))
    assert "d" in similar and "zz" not in similar  # d is known to the second space only
    found = dict(similar.search("a", 3))
    assert list(found) == ["b", "c", "d"]
    assert found["c"] == pytest.approx(0.8 / np.hypot(0.8, 0.2), abs=1e-5)  # the second's
    with pytest.raises(KeyError):
        similar.search("zz", 3)
