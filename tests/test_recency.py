"""The recency and co-occurrence experts of a user's late hashtags (services/user/recency.py)."""

from __future__ import annotations

import numpy as np
import pytest

from services.user.recency import (
    conditionals,
    cooccurrence_counts,
    cooccurrence_expert,
    held_out_cooccurrence,
    held_out_recency,
    post_ranks,
    recency_shares,
    tag_matrix,
)

GLOBAL = np.array([0.5, 0.25, 0.25])


def test_a_users_late_hashtags_weigh_more_by_the_half_life() -> None:
    # user 0 posts a, b, a (in time order); user 1 nothing
    tags = tag_matrix([[0], [1], [0]], 3)
    shares = recency_shares(tags, np.array([0, 0, 0]), 2, half_life=1.0,
                            global_share=GLOBAL)
    # ages 3, 2, 1: weights 1/8, 1/4, 1/2 -> a 5/8, b 2/8 of 7/8
    np.testing.assert_allclose(shares[0], [5 / 7, 2 / 7, 0], rtol=1e-6)
    np.testing.assert_allclose(shares[1], GLOBAL)  # no post: the global share
    long = recency_shares(tags, np.array([0, 0, 0]), 2, half_life=1e9, global_share=GLOBAL)
    np.testing.assert_allclose(long[0], [2 / 3, 1 / 3, 0], rtol=1e-6)  # the plain shares


def test_posts_are_ranked_by_their_time_within_each_user_whatever_their_order() -> None:
    rows = np.array([0, 1, 0, 0, 1])
    times = np.array([30.0, 5.0, 10.0, 20.0, 1.0])
    np.testing.assert_array_equal(post_ranks(rows, times), [2, 1, 0, 1, 0])
    np.testing.assert_array_equal(post_ranks(rows), [0, 0, 1, 2, 1])  # no times: as given
    tags = tag_matrix([[0], [1], [1], [1], [1]], 3)
    # user 0's latest post (time 30) is the first given: a (its weight 1/2), b 1/4 + 1/8
    shares = recency_shares(tags, rows, 2, 1.0, GLOBAL, times)
    np.testing.assert_allclose(shares[0], [4 / 7, 3 / 7, 0], rtol=1e-6)


def test_a_held_out_post_sees_its_users_other_posts_by_distance() -> None:
    tags = tag_matrix([[0], [1], [0], [2]], 3)
    rows = np.array([0, 0, 0, 1])  # user 1 has one post
    recent = held_out_recency(tags, rows, half_life=1.0, global_share=GLOBAL)
    # post 0: post 1 (b) at distance 1, post 2 (a) at 2 -> b 1/2, a 1/4
    np.testing.assert_allclose(recent[0], [1 / 3, 2 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(recent[1], [1, 0, 0])  # both neighbours say a
    np.testing.assert_allclose(recent[3], GLOBAL)  # no other post: the global share
    # post 2 is tagged a, yet a gets only post 0's quarter: a post never counts itself
    np.testing.assert_allclose(recent[2], [1 / 3, 2 / 3, 0], rtol=1e-6)


def test_co_occurrences_of_a_held_out_post_leave_out_its_own_pairs() -> None:
    rng = np.random.default_rng(0)
    hashtags = [sorted(set(rng.integers(0, 6, size=rng.integers(1, 4)).tolist()))
                for _ in range(40)]
    rows = rng.integers(0, 5, size=40)
    tags = tag_matrix(hashtags, 6)
    recent = held_out_recency(tags, rows, 2.0, np.full(6, 1 / 6))
    held = held_out_cooccurrence(recent, hashtags, cooccurrence_counts(tags))
    for post in range(40):
        others = tag_matrix([h for i, h in enumerate(hashtags) if i != post], 6)
        expected = cooccurrence_expert(recent[post:post + 1], cooccurrence_counts(others))[0]
        np.testing.assert_allclose(held[post], expected, atol=1e-6, err_msg=str(post))


def test_a_hashtag_brings_the_ones_it_is_posted_with() -> None:
    counts = cooccurrence_counts(tag_matrix([[0, 1], [0, 1], [0, 2]], 3))
    np.testing.assert_allclose(conditionals(counts).toarray(),
                               [[0, 2 / 3, 1 / 3], [1, 0, 0], [1, 0, 0]])
    expert = cooccurrence_expert(np.array([[1.0, 0, 0]], np.float32), counts)
    assert expert[0] == pytest.approx([0, 2 / 3, 1 / 3])


def test_users_whose_hashtags_drift_get_a_short_half_life_and_a_recency_share() -> None:
    """Each user tags a run of posts with one hashtag, then moves on to the next (a topic
    of the week); the content says nothing. The plain shares spread over every past
    hashtag; the recency expert, with a half-life chosen on held-out training posts,
    knows the current one, and the mixture gives it a share."""
    from datetime import UTC, datetime, timedelta

    from services.user.task import accuracies, prepare_user_task
    from shared.data.readers import Post
    from shared.data.simulated_users import split_by_user_time

    rng = np.random.default_rng(0)
    posts, features = [], {}
    for user in range(30):
        for index in range(40):
            post = Post(id=f"u{user}-{index}", image=None,
                        hashtags=(f"topic{(user + index // 8) % 12}",), user=f"u{user}",
                        time=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=index))
            posts.append(post)
            features[post.id] = rng.normal(size=16).astype(np.float32)
    train, test = split_by_user_time(posts)
    task = prepare_user_task(train, test, features, min_count=1)
    half_life, recent, cooccurring = task.recent_experts
    assert half_life <= 4
    shares, content, neighbours = task.held_out_experts()
    truth = [frozenset(ids) for ids in task.fit_ids]
    assert accuracies(recent, truth)["A@1"] > accuracies(shares, truth)["A@1"] + 30
    mixture, _ = task.mixture()
    extended = mixture.extended((shares, content, neighbours), (recent, cooccurring),
                                task.fit_ids)
    assert extended.weights[3] > 0 and sum(extended.weights) == pytest.approx(1.0)
    test_recent, _ = task.recent_experts_of(task.test_users)
    plain = task.user_shares_of(task.test_users, task.counts)
    assert accuracies(test_recent, task.truth)["A@1"] > accuracies(plain, task.truth)["A@1"]
