"""The documented limits on what a caller may send (shared/limits.py)."""

from __future__ import annotations

from shared.limits import (
    MAX_HASHTAG_CHARS,
    MAX_HASHTAGS,
    MAX_USER_ID_CHARS,
    hashtags_problem,
    quoted,
    request_id_problem,
    user_id_problem,
)


def test_a_quote_of_caller_input_is_cut_and_says_how_long_it_was() -> None:
    assert quoted("food") == "'food'"
    long = quoted("x" * 1_000_000)
    assert long.startswith("'" + "x" * 40 + "'") and "(1000000 characters)" in long
    assert len(long) < 80


def test_user_ids_are_optional_bounded_and_printable() -> None:
    assert user_id_problem("") is None  # no user: the photo alone decides
    assert user_id_problem("", required=True) == "user_id is empty"
    assert user_id_problem("zoë 東京") is None
    assert user_id_problem("u" * MAX_USER_ID_CHARS) is None
    assert "at most 256" in user_id_problem("u" * (MAX_USER_ID_CHARS + 1))
    assert "control characters" in user_id_problem("ann\nbob")


def test_hashtag_lists_are_bounded_in_count_and_length() -> None:
    assert hashtags_problem(["", "🙂", "food"]) is None  # ignored one by one, not refused
    assert hashtags_problem(["a"] * MAX_HASHTAGS) is None
    assert f"at most {MAX_HASHTAGS}" in hashtags_problem(["a"] * (MAX_HASHTAGS + 1))
    problem = hashtags_problem(["food", "y" * (MAX_HASHTAG_CHARS + 1)])
    assert f"has {MAX_HASHTAG_CHARS + 1} characters; at most {MAX_HASHTAG_CHARS} are " \
        "allowed" in problem and len(problem) < 200  # worded as the ids' limits are
    assert hashtags_problem(["y" * MAX_HASHTAG_CHARS]) is None  # the limit itself is fine


def test_request_ids_are_bounded_and_printable() -> None:
    assert request_id_problem("") is None and request_id_problem("r" * 128) is None
    assert "at most 128" in request_id_problem("r" * 129)
    assert "control characters" in request_id_problem("a\x00b")
