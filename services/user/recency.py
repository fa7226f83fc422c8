"""Two experts of what a user tagged lately:

    recency:        P_rec(h | u) = Σ_j 2^(−a_j / T) [h ∈ H_j] / Σ_j 2^(−a_j / T) |H_j|
    co-occurrence:  P_co(h | u) = Σ_g P_rec(g | u) P(h | g),   P(h | g) = C_gh / Σ_h' C_gh'

a_j is how many of the user's own posts separate post j from the post scored (1 for the
latest before it), T the half-life in posts; C_gh counts the training posts tagged with
both g and h (g ≠ h). A user's hashtags of late count most (a topic of the week, a
running event), and the hashtags that go with them come along (#worldcup brings
#football). T = ∞ is the user's plain shares (effects.user_shares).

Held out as a test post would be (what the mixture's weights are fit on): a training
post's recency comes from its user's other posts, a_j the distance in the user's order on
either side; its co-occurrences leave out its own pairs. A user with no other post gets
the global share, as a stranger does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

#: the half-lives (in the user's posts) the recency expert is chosen from
RECENCY_HALF_LIVES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
#: weights below this are dropped (a post 20 half-lives back)
NEGLIGIBLE = 2.0 ** -20


def tag_matrix(hashtags: Sequence[Sequence[int]], n_hashtags: int) -> sparse.csr_matrix:
    """posts × hashtags, 1 where the post carries the hashtag."""
    indptr = np.cumsum([0, *(len(set(ids)) for ids in hashtags)])
    indices = np.concatenate([sorted(set(ids)) for ids in hashtags]) if hashtags else []
    return sparse.csr_matrix((np.ones(indptr[-1], np.float32), np.asarray(indices, np.int64),
                              indptr), shape=(len(hashtags), n_hashtags))


def post_ranks(rows: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
    """Each post's place among its user's posts (0 the first), by ``times`` (seconds; NaN
    for a post without one), ties and missing times in the order given."""
    rows = np.asarray(rows)
    positions = np.arange(len(rows))
    times = np.zeros(len(rows)) if times is None else np.asarray(times, dtype=np.float64)
    order = np.lexsort((positions, times, rows))  # by user, then time, then position
    ranks = np.empty(len(rows), np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(rows[order])) + 1]
    ranks[order] = positions - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    return ranks


def _shares(decayed: sparse.csr_matrix, global_share: np.ndarray) -> np.ndarray:
    totals = np.asarray(decayed.sum(axis=1)).ravel()
    dense = decayed.toarray().astype(np.float32)
    out = np.where(totals[:, None] > 0, dense / np.maximum(totals, 1e-12)[:, None],
                   np.asarray(global_share, np.float32)[None, :])
    return out.astype(np.float32)


def recency_shares(tags: sparse.csr_matrix, rows: np.ndarray, n_users: int,
                   half_life: float, global_share: np.ndarray,
                   times: np.ndarray | None = None) -> np.ndarray:
    """P_rec of every user (users × V) for a post after all of ``tags`` (``rows`` their
    users, ``times`` their times: ``post_ranks``)."""
    rows = np.asarray(rows)
    ages = np.bincount(rows, minlength=n_users)[rows] - post_ranks(rows, times)  # 1: latest
    weights = 0.5 ** (ages / half_life)
    keep = weights >= NEGLIGIBLE
    by_user = sparse.csr_matrix((weights[keep], (rows[keep], np.flatnonzero(keep))),
                                shape=(n_users, tags.shape[0]))
    return _shares((by_user @ tags).tocsr(), global_share)


def held_out_recency(tags: sparse.csr_matrix, rows: np.ndarray, half_life: float,
                     global_share: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
    """P_rec of each post's user without the post (posts × V), a_j the distance between
    the two posts in the user's order (``post_ranks``). Both sides count, where a test post
    has only the past: a held-out post sees twice the near posts a test post does, which
    favours recency in the choices made on them (a short half-life, a share)."""
    rows = np.asarray(rows)
    # by user, then by place: two posts d apart in this order are d apart in the user's
    # order when they belong to the same user; pairs are built a distance at a time, so the
    # work is posts × the nearer of the window and the busiest user's posts, never n² a user
    order = np.lexsort((post_ranks(rows, times), rows))
    window = int(np.ceil(half_life * -np.log2(NEGLIGIBLE)))
    longest = int(np.bincount(rows).max()) if len(rows) else 0
    heads, tails, weights = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for distance in range(1, min(window, longest - 1) + 1):
        first, second = order[:-distance], order[distance:]
        same = rows[first] == rows[second]
        weight = np.full(int(same.sum()), 0.5 ** (distance / half_life))
        heads += [first[same], second[same]]
        tails += [second[same], first[same]]
        weights += [weight, weight]
    pairs = sparse.csr_matrix((np.concatenate(weights), (np.concatenate(heads),
                                                         np.concatenate(tails))),
                              shape=(len(rows), len(rows)))
    return _shares((pairs @ tags).tocsr(), global_share)


def cooccurrence_counts(tags: sparse.csr_matrix) -> sparse.csr_matrix:
    """C (V × V): the posts tagged with both g and h, the diagonal 0."""
    counts = (tags.T @ tags).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return counts


def conditionals(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """P(h | g) = C_gh / Σ_h' C_gh' (a hashtag never seen with another: a zero row)."""
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals, dtype=np.float64),
                      where=totals > 0)
    return (sparse.diags(scale) @ counts).tocsr()


def cooccurrence_expert(recent: np.ndarray, counts: sparse.csr_matrix) -> np.ndarray:
    """P_co(h | u) = Σ_g P_rec(g | u) P(h | g) for each row of ``recent`` (rows × V)."""
    return (sparse.csr_matrix(recent) @ conditionals(counts)).toarray().astype(np.float32)


def held_out_cooccurrence(recent: np.ndarray, hashtags: Sequence[Sequence[int]],
                          counts: sparse.csr_matrix) -> np.ndarray:
    """P_co of each training post without its own pairs: ``recent`` its held-out recency
    (rows × V), ``counts`` C over the posts including it. For g on the post, P(h | g)
    loses the post's pairs: (C_gh − [h on the post]) / (Σ_h' C_gh' − (|H| − 1))."""
    conditional = conditionals(counts)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    out = cooccurrence_expert(recent, counts)
    for post, ids in enumerate(hashtags):
        own = sorted(set(ids))
        if len(own) < 2:
            continue  # a single hashtag makes no pair
        for g in own:
            weight = recent[post, g]
            if weight <= 0:
                continue
            row = counts.getrow(g).toarray().ravel()
            row[[h for h in own if h != g]] -= 1
            remaining = totals[g] - (len(own) - 1)
            without = row / remaining if remaining > 0 else np.zeros_like(row)
            out[post] += weight * (without - conditional.getrow(g).toarray().ravel())
    return np.clip(out, 0, None)
