"""The papers' metrics on cases small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pytest

from shared.eval.metrics import (
    accuracy_at_k,
    overall_precision_recall_f1,
    precision_at_k,
    recall_at_k,
    set_similarity,
    top_k,
)

# Two examples, top 3 each: example 1 hits 2 of its 2 truths, example 2 hits 1 of its 4.
RANKED = [[1, 2, 3], [4, 5, 6]]
TRUTH = [{1, 3}, {6, 7, 8, 9}]


def test_overall_metrics_pool_counts_over_examples() -> None:
    result = overall_precision_recall_f1(RANKED, TRUTH, k=3)
    # O-P = (2 + 1) / (3 + 3); O-R = (2 + 1) / (2 + 4); O-F1 = harmonic mean.
    assert result["O-P"] == pytest.approx(50.0)
    assert result["O-R"] == pytest.approx(50.0)
    assert result["O-F1"] == pytest.approx(50.0)
    uneven = overall_precision_recall_f1([[1, 2, 3]], [{1}], k=3)
    assert uneven["O-P"] == pytest.approx(100 / 3)
    assert uneven["O-R"] == pytest.approx(100.0)
    assert uneven["O-F1"] == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1) * 100)


def test_harrison_metrics_average_per_example() -> None:
    assert precision_at_k(RANKED, TRUTH, 1) == pytest.approx(50.0)  # only example 1's top-1
    # R@3: example 1 recalls 2/2, example 2 recalls 1/4.
    assert recall_at_k(RANKED, TRUTH, 3) == pytest.approx((1.0 + 0.25) / 2 * 100)
    assert accuracy_at_k(RANKED, TRUTH, 3) == pytest.approx(100.0)
    assert accuracy_at_k(RANKED, TRUTH, 2) == pytest.approx(50.0)


def test_no_hit_gives_zero_f1_not_a_division_error() -> None:
    assert overall_precision_recall_f1([[1]], [{2}], k=1) == {"O-P": 0.0, "O-R": 0.0,
                                                               "O-F1": 0.0}


@pytest.mark.parametrize(("ranked", "truth", "message"), [
    ([[1]], [set()], "example 0 has no ground-truth item"),
    ([[1], [2]], [{1}], "2 rankings but 1 truth sets"),
    ([], [], "no examples"),
])
def test_undefined_cases_are_errors(ranked, truth, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overall_precision_recall_f1(ranked, truth)


def test_top_k_orders_best_first_and_breaks_ties_by_index() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert top_k(scores, 10).shape == (2, 4)


def test_top_k_keeps_the_lower_index_of_a_tie_across_the_cut() -> None:
    # Many equal scores around the k-th place: argpartition alone keeps an arbitrary one.
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(200, 300)).astype(float)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(top_k(scores, 10), expected)


def test_instahash_similarity_is_the_cosine_of_mean_vectors_and_the_jaccard_overlap() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    ranked = [[0, 1], [3, 1], [0, 2]]
    truth = [{2}, {0}, {0, 1}]
    # cosines: [.5,.5]·[1,1] → 1; [-.5,.5]·[1,0] → −1/√2; [1,.5]·[.5,.5] → 3/√10
    got = set_similarity(ranked, truth, vectors, k=2)
    assert got["cos"] == pytest.approx((1 - 2 ** -0.5 + 3 / 10 ** 0.5) / 3)
    assert got["cos>0"] == pytest.approx(200 / 3)
    assert got["cos>0.3"] == pytest.approx(200 / 3)
    assert got["cos>0.7"] == pytest.approx(200 / 3)
    assert got["Jaccard"] == pytest.approx(100 / 9)  # the last: 1 shared of 3 in the union
