"""Users' habit counts and expected uses, sparse: what the main effects need of each user,
in memory that grows with what the user did, not with the vocabulary.

Veit's lift needs, for user u and hashtag h, c_uh (how often u used h) and E_uh (how often
u's photos predict h: Σ over u's posts of n_p P(h | x_p)), as

    log lift_uh = log(c_uh + a) − log(E_uh + a).

Dense, both are users × V float64: 16 KB a user at V = 1,000, 16 GB at a million users.
A user row here keeps

- c_uh for the hashtags u used (the only ones where c_uh > 0), and
- E_uh for those and for the KEPT_EXPECTED hashtags their photos predict most;

every other E_uh is taken as 0. That changes an unused hashtag's log lift from
log a − log(E_uh + a) (at most 0) to 0, by at most E_uh / a: the hashtags left out are the
ones the user's photos predict least. A lift of an unused hashtag stays ≤ 0 either way, so
the lookup's threshold check (services/user/lookup.py) still holds.

A row is one small structured array (hashtag id, count, expected), replaced whole on an
update, so a reader holding the old one sees a consistent row.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

#: how many of a user's largest expected uses are kept besides the hashtags they used
KEPT_EXPECTED = 32
ROW = np.dtype([("id", "<i4"), ("count", "<f4"), ("expected", "<f4")])
_EMPTY = np.zeros(0, ROW)


class SparseProfiles:
    """One sparse row per user (by the lookup's row number)."""

    def __init__(self, n_hashtags: int, kept_expected: int = KEPT_EXPECTED) -> None:
        self.n_hashtags, self.kept_expected = n_hashtags, kept_expected
        self.rows: list[np.ndarray] = []

    # --- building ----------------------------------------------------------------------
    @classmethod
    def from_dense(cls, counts: np.ndarray, expected: np.ndarray | None,
                   kept_expected: int = KEPT_EXPECTED) -> SparseProfiles:
        """From users × V counts (and expected uses, or none: a model without effects)."""
        profiles = cls(counts.shape[1], kept_expected)
        for row in range(len(counts)):
            profiles.rows.append(profiles._row(
                counts[row], None if expected is None else expected[row]))
        return profiles

    def _row(self, counts: np.ndarray, expected: np.ndarray | None) -> np.ndarray:
        """A user's row from their dense counts and expected uses."""
        keep = np.flatnonzero(counts > 0)
        if expected is not None and self.kept_expected:
            largest = np.argpartition(-expected, min(self.kept_expected, len(expected) - 1))
            largest = largest[:self.kept_expected]
            keep = np.union1d(keep, largest[expected[largest] > 0])
        row = np.empty(len(keep), ROW)
        row["id"], row["count"] = keep, counts[keep]
        row["expected"] = 0.0 if expected is None else expected[keep]
        return row

    @classmethod
    def from_arrays(cls, n_hashtags: int, arrays: dict[str, np.ndarray],
                    kept_expected: int = KEPT_EXPECTED) -> SparseProfiles:
        """From ``arrays()``'s compressed rows (a snapshot)."""
        profiles = cls(n_hashtags, kept_expected)
        bounds, entries = arrays["profile_bounds"], np.empty(len(arrays["profile_ids"]), ROW)
        entries["id"], entries["count"] = arrays["profile_ids"], arrays["profile_counts"]
        entries["expected"] = arrays["profile_expected"]
        profiles.rows = [entries[start:end].copy()
                         for start, end in itertools.pairwise(bounds.tolist())]
        return profiles

    def arrays(self) -> dict[str, np.ndarray]:
        """Every row, compressed (row i is entries bounds[i]:bounds[i + 1])."""
        lengths = np.fromiter((len(r) for r in self.rows), np.int64, len(self.rows))
        joined = np.concatenate(self.rows) if self.rows else _EMPTY
        return {"profile_bounds": np.concatenate([[0], np.cumsum(lengths)]),
                "profile_ids": joined["id"].copy(), "profile_counts": joined["count"].copy(),
                "profile_expected": joined["expected"].copy()}

    def append(self) -> int:
        """A new user's empty row; its number."""
        self.rows.append(_EMPTY)
        return len(self.rows) - 1

    # --- reading -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def counts(self, row: int) -> np.ndarray:
        """c_u·, dense (V)."""
        dense = np.zeros(self.n_hashtags)
        entries = self.rows[row]
        dense[entries["id"]] = entries["count"]
        return dense

    def expected(self, row: int) -> np.ndarray:
        """E_u·, dense (V): 0 where the row keeps none."""
        dense = np.zeros(self.n_hashtags)
        entries = self.rows[row]
        dense[entries["id"]] = entries["expected"]
        return dense

    def used(self, row: int) -> np.ndarray:
        entries = self.rows[row]
        return entries["id"][entries["count"] > 0].astype(np.int64)

    def at(self, row: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c_uh, E_uh) for the hashtags ``ids``."""
        entries = self.rows[row]
        where = np.searchsorted(entries["id"], ids)
        found = where < len(entries)
        found[found] = entries["id"][where[found]] == ids[found]
        counts, expected = np.zeros(len(ids)), np.zeros(len(ids))
        counts[found] = entries["count"][where[found]]
        expected[found] = entries["expected"][where[found]]
        return counts, expected

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, expected), users × V: for a model's artifact and for tests."""
        counts = np.zeros((len(self.rows), self.n_hashtags))
        expected = np.zeros((len(self.rows), self.n_hashtags))
        for row, entries in enumerate(self.rows):
            counts[row, entries["id"]] = entries["count"]
            expected[row, entries["id"]] = entries["expected"]
        return counts, expected

    @property
    def nbytes(self) -> int:
        """Bytes the rows hold, with each row array's own overhead."""
        return sum(r.nbytes + ROW_OVERHEAD for r in self.rows) + 8 * len(self.rows)

    # --- writing (the lookup's one writer) ---------------------------------------------
    def add_post(self, row: int, accepted: Sequence[int], expected: np.ndarray | None,
                 ) -> None:
        """One post: each accepted hashtag counted once, ``expected`` (n P(h | x), dense V,
        or None) added to the expected uses; the row is rebuilt and replaced whole."""
        counts = self.counts(row)
        counts[list(accepted)] += 1
        total = self.expected(row)
        if expected is not None:
            total += expected
        self.rows[row] = self._row(counts, None if expected is None else total)

    def reset(self, row: int) -> None:
        self.rows[row] = _EMPTY


#: a numpy array's own bytes beside its data (sys.getsizeof of an empty one)
ROW_OVERHEAD = _EMPTY.__sizeof__()
