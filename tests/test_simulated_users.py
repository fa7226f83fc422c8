"""The simulated-user benchmark: deterministic, habits planted as documented."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from shared.data.simulated_users import (
    HELD_OUT_PHOTOS,
    SIGNATURE_PROBABILITY,
    TRANSLATIONS,
    drop_spammers,
    image_digest,
    photo_pools,
    simulate,
    source_posts,
    split_by_user_time,
    users_of,
)


@pytest.fixture(scope="module")
def sources(data_dir: Path) -> list:
    return source_posts(data_dir)


def test_same_seed_same_benchmark_other_seed_other_one(sources: list) -> None:
    first, again = simulate(sources, 60, seed=4), simulate(sources, 60, seed=4)
    assert first == again
    assert simulate(sources, 60, seed=5) != first


def test_posts_per_user_are_heavy_tailed(sources: list) -> None:
    counts = sorted(Counter(p.user for p in simulate(sources, 300, seed=0)).values())
    assert counts[0] >= 5 and counts[-1] > 5 * counts[len(counts) // 2]


def test_planted_habits_show_in_the_posts(sources: list) -> None:
    posts = simulate(sources, 120, seed=1)
    users = users_of(posts, seed=1, n_users=120)
    by_user: dict[str, list] = {}
    for post in posts:
        by_user.setdefault(post.user, []).append(post)
    signed = sum(users[p.user].signatures[0] in p.hashtags for p in posts)
    assert signed / len(posts) == pytest.approx(SIGNATURE_PROBABILITY, abs=0.03)
    for user_id, user_posts in by_user.items():
        user = users[user_id]
        tags = Counter(t for p in user_posts for t in p.hashtags)
        for member, preferred in user.synonyms.items():
            if member != preferred:  # only the preferred spelling of a group is written
                assert tags[member] == 0 or member == TRANSLATIONS.get(user.language, {}).get(
                    preferred)
        if user.language != "en":
            assert not any(tags[english] for english in TRANSLATIONS[user.language])


def test_spam_filter_removes_the_planted_spammers(sources: list) -> None:
    posts = simulate(sources, 300, seed=0)
    spammers = {u.id for u in users_of(posts, 0, 300).values() if u.spammer}
    assert spammers  # 3 % of 300
    kept_users = {p.user for p in drop_spammers(posts)}
    assert not spammers & kept_users
    assert len(kept_users) >= 300 - 3 * len(spammers)


def test_time_split_trains_on_each_users_first_posts(sources: list) -> None:
    train, test = split_by_user_time(simulate(sources, 50, seed=2))
    last_train = {}
    for post in train:
        last_train[post.user] = max(last_train.get(post.user, post.time), post.time)
    assert test and all(post.time > last_train[post.user] for post in test)
    assert len(train) / (len(train) + len(test)) == pytest.approx(0.9, abs=0.05)


def test_personal_meanings_add_each_users_hashtag_to_its_topic_only(sources: list) -> None:
    plain = simulate(sources, 80, seed=2)
    meant = simulate(sources, 80, seed=2, meaning_probability=0.5)
    users = users_of(meant, seed=2, n_users=80, meanings=True)
    added = 0
    for before, after in zip(plain, meant, strict=True):
        # Rule 7 draws from its own generator: every other habit stays as it was.
        assert set(before.hashtags) <= set(after.hashtags)
        extra = set(after.hashtags) - set(before.hashtags)
        meanings = users[after.user].meanings
        assert all(meanings.get(tag) == after.labels[0] for tag in extra)
        added += len(extra)
    assert len(set(map(frozenset, (u.meanings for u in users.values())))) > 20
    fitting = sum(tied == p.labels[0] for p in meant for tied in users[p.user].meanings.values()
                  if not users[p.user].spammer)
    assert 0.4 < added / fitting < 0.6  # probability 0.5 where the topic fits


@pytest.mark.parametrize("seed", [0, 3])
def test_no_test_post_shows_a_training_photo(sources: list, seed: int) -> None:
    train, test = split_by_user_time(drop_spammers(simulate(sources, 300, seed=seed)))
    seen = {image_digest(post.image) for post in train}
    assert len(test) > 300 and not [p for p in test if image_digest(p.image) in seen]


def test_photo_pools_split_by_content(sources: list) -> None:
    train, held_out = photo_pools(sources, seed=0)
    train_photos = {image_digest(p.image) for posts in train.values() for p in posts}
    held_photos = {image_digest(p.image) for posts in held_out.values() for p in posts}
    assert not train_photos & held_photos
    share = len(held_photos) / len(train_photos | held_photos)
    assert share == pytest.approx(HELD_OUT_PHOTOS, abs=0.02)
