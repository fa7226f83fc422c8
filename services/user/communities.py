"""Where each user posts: their posts counted by community (photo set), each post split by
the community mix it came with (the one its poster named, or the gate's guess).

The recommender turns the counts into a prior over communities for the user's next photo
(services/recommender/model.py: ``community_prior``) and multiplies the gate's guess by
it. Counts are kept by name, not by the image model's order, so they survive an image
model with other communities. They travel in the journal's records and the snapshots
like the hashtag counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from shared.limits import MAX_COMMUNITY_CHARS

#: at most this many communities a post (a request's limit)
MAX_COMMUNITIES = 16


def community_problem(mix: Mapping[str, float]) -> str | None:
    """What is wrong with a post's community mix, or None."""
    if len(mix) > MAX_COMMUNITIES:
        return f"communities: at most {MAX_COMMUNITIES}, got {len(mix)}"
    for name, weight in mix.items():
        if not name or len(name) > MAX_COMMUNITY_CHARS:
            return f"communities: a name must have 1 to {MAX_COMMUNITY_CHARS} characters"
        if not math.isfinite(weight) or weight < 0:
            return f"communities: {name!r} has weight {weight}, not finite and >= 0"
    return None


class UserCommunities:
    def __init__(self) -> None:
        self._posts: dict[str, dict[str, float]] = {}

    def add(self, user: str, mix: Mapping[str, float]) -> None:
        """One post of ``user``'s, split by ``mix`` (normalised here; empty: nothing)."""
        total = sum(mix.values())
        if total <= 0:
            return
        counts = dict(self._posts.get(user, {}))
        for name, weight in mix.items():
            if weight > 0:
                counts[name] = counts.get(name, 0.0) + weight / total
        # a new dict swapped in whole: a reader on another thread copies a finished one
        self._posts[user] = counts

    def posts(self, user: str | None) -> dict[str, float]:
        return dict(self._posts.get(user or "", {}))

    def forget(self, user: str) -> None:
        self._posts.pop(user, None)

    def state(self) -> dict[str, dict[str, float]]:
        return {user: dict(counts) for user, counts in self._posts.items()}

    def restore(self, state: Mapping[str, Mapping[str, float]]) -> None:
        self._posts = {user: {name: float(n) for name, n in counts.items()}
                       for user, counts in state.items()}

