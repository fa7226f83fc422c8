"""What a caller may send, checked at the edge of every service, and how a caller's input
may be quoted back.

A limit is named in the error that enforces it. No error detail or log line quotes more
than ``QUOTE_CHARS`` of what a caller sent: gRPC carries error details as metadata, whose
size is capped (8 KiB by default), so echoing a 1 MB hashtag turned the caller's mistake
into UNAVAILABLE ("received metadata size exceeds hard limit").

| what | limit |
| --- | --- |
| user id | at most 256 characters, printable ones only (no control characters) |
| hashtags in one Feedback / Update | at most 100 |
| one hashtag | at most 100 characters (Instagram's own limit is lower) |
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_USER_ID_CHARS = 256
MAX_HASHTAGS = 100
MAX_HASHTAG_CHARS = 100
MAX_REQUEST_ID_CHARS = 128
#: longer than any community (photo set) name a model holds
MAX_COMMUNITY_CHARS = 64
#: the most of a caller's text an error or a log line repeats
QUOTE_CHARS = 40


def quoted(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` as a Python literal, cut to ``limit`` characters with its length noted."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def user_id_problem(user_id: str, required: bool = False) -> str | None:
    """Why ``user_id`` is refused, or None. Empty means "no user" unless ``required``."""
    if not user_id.strip():
        return "user_id is empty" if required else None
    if len(user_id) > MAX_USER_ID_CHARS:
        return (f"user_id has {len(user_id)} characters; at most {MAX_USER_ID_CHARS} are "
                "allowed")
    if not user_id.isprintable():
        return f"user_id {quoted(user_id)} holds control characters; printable ones only"
    return None


def request_id_problem(request_id: str) -> str | None:
    """Why a client's request id (for idempotent writes) is refused, or None."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        return (f"request_id has {len(request_id)} characters; at most "
                f"{MAX_REQUEST_ID_CHARS} are allowed")
    if not request_id.isprintable():
        return "request_id holds control characters; printable ones only"
    return None


def hashtags_problem(hashtags: Sequence[str]) -> str | None:
    """Why a list of hashtags is refused, or None (an empty or letterless hashtag is no
    problem here: the services ignore it and say so)."""
    if len(hashtags) > MAX_HASHTAGS:
        return f"{len(hashtags)} hashtags; at most {MAX_HASHTAGS} are allowed in one call"
    for hashtag in hashtags:
        problem = hashtag_problem(hashtag)
        if problem:
            return problem
    return None


def hashtag_problem(hashtag: str) -> str | None:
    if len(hashtag) > MAX_HASHTAG_CHARS:
        # worded as the user id's and request id's are: "has N characters; at most M"
        return (f"hashtag {hashtag[:QUOTE_CHARS]!r}… has {len(hashtag)} characters; at most "
                f"{MAX_HASHTAG_CHARS} are allowed")
    return None
