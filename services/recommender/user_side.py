"""The user side of a known user's answer, and how much it weighs against the photo.

    s(h) = ŝ_photo(h) + w · u(h)
    u(h) = m · P(h | photo, user) / P(best | photo, user) + (1 − m) · P_u(h) / max P_u

ŝ_photo is the fused photo score scaled to [0, 1] (``min_max_rows``); u mixes the user
model's answer with the user's own habits (``mix_user_answers``). m and w are fitted on
held-out posts (``fit_user_mix``, ``fit_user_weight``): services/user/train.py at training,
`evaluate user`'s `served` row on real users.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.eval.metrics import top_k

log = logging.getLogger(__name__)


#: weight of the user model's relative probability against the fused photo score (both
#: on [0, 1]) when the user model carries no fitted weight (``fit_user_weight``): a model
#: trained before the fit existed
USER_WEIGHT = 1.0
#: the user model is asked for this many hashtags at least, so that its opinion of the
#: photo methods' candidates is known
USER_DEPTH = 50
#: the weights ``fit_user_weight`` tries: 0 is the photo alone, the largest the user alone
#: but for ties; wide enough that a choice at its top end is seen as such (it was 100, the
#: top, for the served models while the grid ended there)
USER_WEIGHT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
                    50.0, 100.0, 200.0, 500.0, 1000.0)
#: the user model's share of the user side (``mix_user_answers``) that ``fit_user_mix``
#: tries: 1 is the user model alone (the served form before the mix), 0 the user's habits
USER_MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class UserPart:
    """What the user service said of a known user and a photo: the top hashtags with
    their relative probabilities, the weight of that side, why it is missing (the degraded
    reasons), the user's posts by community, and the status name of a failed call."""

    hashtags: list[tuple[str, float]]
    weight: float
    reasons: list[str]
    communities: dict[str, float] = field(default_factory=dict)
    failed: str | None = None


def min_max_rows(scores: np.ndarray) -> np.ndarray:
    """Each row scaled to [0, 1] (a constant row to 0): the photo score's scale in
    ``condition_on_user``."""
    scores = np.asarray(scores, dtype=np.float32)
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1), 0).astype(
        np.float32)


def condition_on_user(vocabulary_index: dict[str, int], fused: np.ndarray,
                      user_hashtags: Sequence[tuple[str, float]],
                      weight: float = USER_WEIGHT) -> tuple[np.ndarray, list[str]]:
    """s(h) = ŝ_photo(h) + weight · P(h | photo, user) / P(best | photo, user), where ŝ_photo
    is the fused photo score min-max scaled to [0, 1]; hashtags the user model ranks but
    the photo models do not know (a user's own hashtags) enter with the user term alone.

    Returns the scores of the vocabulary followed by those of the extra hashtags, and the
    extra hashtags."""
    scaled = min_max_rows(np.asarray(fused)[None, :])[0].astype(np.float64)
    extra_terms: list[str] = []
    extra_scores: list[float] = []
    for term, relative in user_hashtags:
        row = vocabulary_index.get(term)
        if row is None:
            extra_terms.append(term)
            extra_scores.append(weight * relative)
        else:
            scaled[row] += weight * relative
    return np.concatenate([scaled, extra_scores]), extra_terms


@dataclass(frozen=True)
class UserWeightFit:
    """The chosen weight of ``condition_on_user`` and, for every weight tried, the A@1 and
    A@10 (%) of the held-out posts it was chosen on; ``reported``: the same for the
    chosen weight, the photo alone (0) and the old hand-set 1 on posts the choice never
    saw (the figures to quote)."""

    weight: float
    accuracy: dict[float, tuple[float, float]]
    posts: int
    reported: dict[float, tuple[float, float]] = field(default_factory=dict)
    reported_posts: int = 0

    def about(self) -> dict:
        """For a manifest: plain JSON."""
        return {"user_weight": self.weight, "posts": self.posts,
                "accuracy": [{"weight": w, "a1": round(a1, 2), "a10": round(a10, 2)}
                             for w, (a1, a10) in sorted(self.accuracy.items())],
                "reported_posts": self.reported_posts,
                "reported": [{"weight": w, "a1": round(a1, 2), "a10": round(a10, 2)}
                             for w, (a1, a10) in sorted(self.reported.items())]}


def fit_user_weight(photo_scores: np.ndarray, vocabulary: Sequence[str],
                    user_hashtags: Sequence[Sequence[tuple[str, float]]],
                    truth: Sequence[frozenset[str]],
                    grid: Sequence[float] = USER_WEIGHT_GRID,
                    report: Sequence[bool] | None = None) -> UserWeightFit:
    """The weight of ``condition_on_user`` with the best A@1 + A@10 (the user model's own
    criterion) on held-out posts that carry both a photo and a known user: row i of
    ``photo_scores`` is post i's fused photo score (its photo scored out of fold), and
    ``user_hashtags[i]`` the user model's answer for it (a model that never saw the post).
    Ties go to the smaller weight: the photo alone is the default. ``report``: posts
    (True) kept out of the choice, on which the chosen weight is measured."""
    if not len(truth):
        raise ValueError("fitting the user weight needs at least one held-out post")
    if not len(photo_scores) == len(user_hashtags) == len(truth):
        raise ValueError("photo scores, user answers and truth must have one row per post")
    report = np.zeros(len(truth), bool) if report is None else np.asarray(report, bool)
    choose = np.flatnonzero(~report)
    if not len(choose):
        raise ValueError("fitting the user weight needs a held-out post to choose on")
    index = {term: row for row, term in enumerate(vocabulary)}

    def accuracy_of(weight: float, rows: np.ndarray) -> tuple[float, float]:
        first = tenth = 0
        for row in rows:
            combined, extra = condition_on_user(index, photo_scores[row],
                                                user_hashtags[row], weight)
            terms = (*vocabulary, *extra)
            ranked = [terms[i] for i in top_k(combined[None, :], 10)[0]]
            first += ranked[0] in truth[row]
            tenth += bool(truth[row].intersection(ranked))
        return 100 * first / len(rows), 100 * tenth / len(rows)

    accuracy = {float(weight): accuracy_of(weight, choose) for weight in grid}
    best = max(accuracy, key=lambda w: (sum(accuracy[w]), -w))
    log.info("user weight: %g (held-out A@1 %.2f, A@10 %.2f on %d posts; photo alone "
             "%.2f / %.2f)", best, *accuracy[best], len(choose),
             *accuracy.get(0.0, (float("nan"), float("nan"))))
    shown = np.flatnonzero(report)
    reported = {w: accuracy_of(w, shown) for w in sorted({0.0, 1.0, best})} \
        if len(shown) else {}
    if reported:
        log.info("user weight %g on %d posts the choice never saw: A@1 %.2f, A@10 %.2f "
                 "(photo alone %.2f / %.2f)", best, len(shown), *reported[best],
                 *reported[0.0])
    return UserWeightFit(best, accuracy, len(choose), reported, len(shown))


def mix_user_answers(model: Sequence[tuple[str, float]], habits: Sequence[tuple[str, float]],
                     mix: float) -> list[tuple[str, float]]:
    """The user side of ``condition_on_user`` as a mixture of the user's two experts, each
    given as relative probabilities (the best 1):

        u(h) = mix · P(h | x, u) / P(best | x, u) + (1 − mix) · P_u(h) / max P_u

    the user model's answer for the photo (habit lift × photo, three-way term) and the
    user's own shares of their hashtags (what real users' posts say wins, the `mixture` of
    `evaluate user`: a signature hashtag keeps its share whatever the photo shows). A
    hashtag one side does not list counts 0 there. Best first, rescaled so the best is 1."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"the user model's share must lie in [0, 1], got {mix}")
    mixed: dict[str, float] = {}
    for share, answer in ((mix, model), (1.0 - mix, habits)):
        if share > 0:
            for term, relative in answer:
                mixed[term] = mixed.get(term, 0.0) + share * relative
    top = max(mixed.values(), default=0.0)
    if top <= 0:
        return []
    return sorted(((term, value / top) for term, value in mixed.items() if value > 0),
                  key=lambda pair: -pair[1])


@dataclass(frozen=True)
class UserMixFit:
    """The chosen share of the user model in the user side (``mix_user_answers``) and,
    for every share tried, its weight fit (``fit_user_weight`` on the same posts)."""

    mix: float
    fits: dict[float, UserWeightFit]

    @property
    def weight(self) -> float:
        return self.fits[self.mix].weight

    def about(self) -> dict:
        """For a manifest: the chosen fit's ``about()`` with the share, and every share's
        chosen weight and figures (the choosing posts' and the reported ones')."""
        def best(fit: UserWeightFit, table: dict) -> dict | None:
            if fit.weight not in table:  # no post was kept out to report on
                return None
            a1, a10 = table[fit.weight]
            return {"a1": round(a1, 2), "a10": round(a10, 2)}

        return {**self.fits[self.mix].about(), "user_mix": self.mix,
                "by_mix": [{"user_mix": mix, "user_weight": fit.weight,
                            "chosen_on": best(fit, fit.accuracy),
                            "reported": best(fit, fit.reported)}
                           for mix, fit in sorted(self.fits.items())]}


def fit_user_mix(photo_scores: np.ndarray, vocabulary: Sequence[str],
                 model_answers: Sequence[Sequence[tuple[str, float]]],
                 habit_answers: Sequence[Sequence[tuple[str, float]]],
                 truth: Sequence[frozenset[str]], report: Sequence[bool] | None = None,
                 mixes: Sequence[float] = USER_MIX_GRID,
                 grid: Sequence[float] = USER_WEIGHT_GRID) -> UserMixFit:
    """The share of the user model (``mix_user_answers``) and the weight of the user side
    (``fit_user_weight``) with the best A@1 + A@10 on the held-out posts not in ``report``;
    ties go to the larger share (the user model alone was the served form). Every share's
    weight is reported on the ``report`` posts too."""
    if not len(model_answers) == len(habit_answers) == len(truth):
        raise ValueError("user model answers, habits and truth must have one row per post")
    fits = {float(mix): fit_user_weight(
        photo_scores, vocabulary,
        [mix_user_answers(m, h, mix) for m, h in zip(model_answers, habit_answers,
                                                      strict=True)],
        truth, grid, report) for mix in mixes}
    chosen = max(fits, key=lambda mix: (sum(fits[mix].accuracy[fits[mix].weight]), mix))
    log.info("user mix: the user model's share %g, weight %g", chosen, fits[chosen].weight)
    return UserMixFit(chosen, fits)
