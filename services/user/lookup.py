"""Per-user hashtag lookup over the tensor model, cold users, online profiles, persistence.

The score of hashtag i for photo x and user k (services/user/model.py, effects.py):

    s_k(h_i | x) = h_iᵀ W^(u'_k) f + β log lift_k(h_i) + γ log P(h_i | x)

Exact top K by FAISS and a threshold check. Each hashtag is indexed as [h_i, A_i, b_i]
(A, b: the photo model's logits A x + b) and queried with [W^(u'_k) f, γ x, γ], which
gives T(h) = the score without the lift and without log-softmax's normaliser (the same
for every hashtag of a photo). A hashtag user k never used has lift (0 + a) / (E_kh + a)
≤ 1, so its score is at most T(h): once the K-th best exact score among FAISS's top K'
and the user's own hashtags reaches the K'-th T, no other hashtag can enter; otherwise
K' grows. A stranger's lift is 1, and FAISS's order is already exact.

Cold-user rule, with n_k the user's posts seen so far and C = COLD_START_POSTS = 1:
    known user:    u'_k = (n_k u_k + C ū) / (n_k + C),  lift_k from their counts (a
                   stranger's lift of 1 until their uses outweigh the smoothing a)
    unknown user:  u' = ū, lift 1: the user-agnostic model, the photo alone
A stranger gets the agnostic tensor over the photo model; a known user their own
embedding and habits, both pulled toward everyone's while they have posted little.

``update`` learns from one accepted post (photo, hashtags) without retraining the rest:
only that user's embedding moves (a few Adam steps on the softmax likelihood of the
accepted hashtags), and that user's counts and expected uses grow (c_kh += 1 for each
accepted hashtag, E_kh += |H| P(h | x) for every hashtag), hence their lift.

Retrieval (Veit §4.3): the photos for hashtag h as user k would tag them, ranked by
s(h, f_j, u_k) (the lift is the same for every photo): one FAISS inner-product search,
each photo indexed as [f_j, x_j, 1, −log Σ_h exp(A_h x_j + b_h)].
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from collections.abc import Sequence

import numpy as np

from services.user.communities import UserCommunities
from services.user.effects import MainEffects, log_normalisers
from services.user.persistence import KIND as KIND  # the artifact kind, re-exported
from services.user.persistence import LookupPersistence
from services.user.privacy import PhotoOwners, RequestLog
from services.user.profiles import SparseProfiles
from services.user.tensor import TensorWeights
from shared.index import InnerProductIndex, photo_index

COLD_START_POSTS = 1.0
#: photos whose per-photo parts (UserHashtagLookup.photo_parts) stay in memory
PHOTO_MEMORY = 4096
#: how many times deeper than asked the first search of a batch goes (``top_k``): at 1, 3
#: rows in 4 searched again; bench/user_top_k.py, 2,000 hashtags, k 50: 2.9 ms a batch of
#: 4 at 1, 1.3 at 2, 3-5 at 3-4 (each candidate is rescored exactly)
FIRST_DEPTH = 2


class UserHashtagLookup(LookupPersistence):
    def __init__(self, model: TensorWeights, vocabulary: Sequence[str], user_ids: Sequence[str],
                 post_counts: np.ndarray, hashtag_counts: np.ndarray,
                 effects: MainEffects | None = None, mean_user: np.ndarray | None = None,
                 ) -> None:
        """``effects`` None: Veit's tensor alone. ``mean_user`` (ū) belongs to the trained
        model: taken from it when not given, and never moved by online updates, so that
        one user's feedback changes nobody else's ranking."""
        self.model = model
        self.vocabulary = tuple(vocabulary)
        self.user_index = {user: row for row, user in enumerate(user_ids)}
        self.user_ids = list(user_ids)
        #: the users the model was trained with: the first rows (a snapshot says how many,
        #: so that resharding can tell them from the users added online)
        self.trained_users = len(self.user_ids)
        self.post_counts = np.asarray(post_counts, dtype=np.float64).copy()
        hashtag_counts = np.asarray(hashtag_counts, dtype=np.float64)
        if effects is not None and effects.expected.shape != hashtag_counts.shape:
            raise ValueError(f"expected uses {effects.expected.shape} do not match "
                             f"the counts {hashtag_counts.shape}")
        #: c_uh and E_uh, sparse (services/user/profiles.py); the effects keep the fitted
        #: weights only, so nothing dense a user stays behind
        self.user_hashtags = SparseProfiles.from_dense(
            hashtag_counts, None if effects is None else effects.expected)
        self.effects = None if effects is None else dataclasses.replace(
            effects, expected=np.zeros((0, len(vocabulary))))
        arrays = model.arrays
        self.user_vectors = arrays["users.weight"].copy()
        self.mean_user = (model.mean_user if mean_user is None
                          else np.asarray(mean_user, dtype=np.float32))
        self.hashtag_vectors = arrays["hashtags.weight"].copy()
        # Serving runs in numpy (a single query costs a third of torch's per-op overhead):
        # the feature standardisation folded into the projection, f = x P'ᵀ + b'.
        weight = arrays["project.weight"].astype(np.float64)
        scale = arrays["feature_scale"].astype(np.float64)
        mean = arrays["feature_mean"].astype(np.float64)
        self.projection = np.ascontiguousarray((weight / scale).T, dtype=np.float32)
        self.projection_bias = (arrays["project.bias"]
                                - weight @ (mean / scale)).astype(np.float32)
        self.core = arrays["core"].copy()
        index_vectors = self.hashtag_vectors if effects is None else np.hstack(
            [self.hashtag_vectors, effects.content.weight, effects.content.bias[:, None]])
        self.index = InnerProductIndex(index_vectors)
        self.hashtag_rows = {term: row for row, term in enumerate(self.vocabulary)}
        self.photo_ids: list[str] = []
        self._photo_rows: dict[str, int] = {}
        self._photo_chunks: list[np.ndarray] = []  # raw features, concatenated on demand
        self.photo_index: InnerProductIndex | None = None
        #: how many photos came with the trained model (``profiles`` keeps the rest)
        self.trained_photos = 0
        #: held while state changes and while a read needs one user's rows consistent
        self.lock = threading.RLock()
        self._spare_rows: dict[str, np.ndarray] = {}  # _with_row's buffers
        #: how the recommender should weigh this model's answer against the photo's, as
        #: fitted at training (fit_user_weight's ``about()``); None: not fitted
        self.recommender_fit: dict | None = None
        #: (f, normaliser) of the photos scored lately, by their features' bytes: they
        #: depend on the photo and the trained weights only, so one photo shown to many
        #: users costs its two products once (PHOTO_MEMORY photos, newest last)
        self._photo_parts: collections.OrderedDict[bytes, tuple[np.ndarray, float]] = \
            collections.OrderedDict()
        #: who posted each photo added after training (retrieval shows each their own)
        self.owners = PhotoOwners()
        #: the answers to recent updates, by (user, request id): a retry is answered once
        self.requests = RequestLog()
        #: where each user posts: their posts by community
        self.communities = UserCommunities()

    @property
    def user_weight(self) -> float | None:
        """The fitted weight of this model's relative probability in the recommender."""
        return None if self.recommender_fit is None else float(
            self.recommender_fit["user_weight"])

    @property
    def user_mix(self) -> float:
        """The fitted share of this model's answer in the user side of the recommender
        (``mix_user_answers``; the rest is the user's habits); 1 when not fitted."""
        fit = self.recommender_fit or {}
        return float(fit.get("user_mix", 1.0))

    def habits(self, users: Sequence[str | None], depth: int,
               ) -> list[list[tuple[str, float]]]:
        """Each user's most used hashtags with their share relative to the most used one
        (P_u(h) / max P_u: the habit side of ``mix_user_answers``), at most ``depth``,
        from the counts as updates leave them; empty for an unknown user."""
        answers = []
        with self.lock:
            for user in users:
                if not self.known(user):
                    answers.append([])
                    continue
                entries = self.user_hashtags.rows[self.user_index[user]]
                entries = entries[entries["count"] > 0]
                top = np.argsort(-entries["count"], kind="stable")[:depth]
                most = float(entries["count"][top[0]]) if len(top) else 1.0
                answers.append([(self.vocabulary[entries["id"][i]],
                                 float(entries["count"][i]) / most) for i in top])
        return answers

    def add_photos(self, photo_ids: Sequence[str], features: np.ndarray) -> None:
        """Makes photos retrievable (their raw CNN features are kept for persistence)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if len(photo_ids) != len(features):
            raise ValueError(f"{len(photo_ids)} photo ids for {len(features)} feature rows")
        new, seen = [], set()  # a photo posted again is indexed once
        for row, photo in enumerate(photo_ids):
            if photo not in self._photo_rows and photo not in seen:
                new.append(row)
                seen.add(photo)
        if len(new) < len(photo_ids):
            photo_ids, features = [photo_ids[row] for row in new], features[new]
        if not photo_ids:
            return
        vectors = self.photo_vectors(features)
        if self.effects is not None:
            normalisers = log_normalisers(self.effects.content.logits(features))
            vectors = np.hstack([vectors, features, np.ones((len(features), 1)),
                                 -normalisers[:, None]]).astype(np.float32)
        with self.lock:
            self._index_photos(photo_ids, features, vectors)

    def add_upload(self, photo_id: str, user: str, features: np.ndarray) -> None:
        """``user`` posted the photo: retrievable, by them only."""
        self.add_photos([photo_id], np.atleast_2d(features))
        with self.lock:
            self.owners.add(photo_id, user)

    def _index_photos(self, photo_ids: Sequence[str], features: np.ndarray,
                      vectors: np.ndarray) -> None:
        if self.photo_index is None:
            self.photo_index = photo_index(vectors)
        else:
            self.photo_index.add(vectors)
        self._photo_chunks.append(features)
        self._photo_rows.update((photo, len(self.photo_ids) + row)
                                for row, photo in enumerate(photo_ids))
        self.photo_ids.extend(photo_ids)

    @property
    def photo_features(self) -> np.ndarray | None:
        """The raw CNN features of every retrievable photo, in ``photo_ids`` order."""
        with self.lock:
            if not self._photo_chunks:
                return None
            if len(self._photo_chunks) > 1:
                self._photo_chunks = [np.concatenate(self._photo_chunks)]
            return self._photo_chunks[0]

    def retrieve(self, hashtag: int, user: str | None, k: int = 10,
                 ) -> list[tuple[str, float]]:
        """The k photos with the highest s(h, f_j, u) for this user (module docstring);
        the scores leave out the user's lift, the same for every photo."""
        if not 0 <= hashtag < len(self.vocabulary):
            raise ValueError(f"hashtag id must lie in [0, {len(self.vocabulary)})")
        with self.lock:
            return self._retrieve(hashtag, user, k)

    def _retrieve(self, hashtag: int, user: str | None, k: int) -> list[tuple[str, float]]:
        if self.photo_index is None:
            return []
        query = np.einsum("e,edf,d->f", self.user_vector(user), self.core,
                          self.hashtag_vectors[hashtag])
        if self.effects is not None:
            gamma, photo = self.effects.gamma, self.effects.content
            query = np.concatenate([query, gamma * photo.weight[hashtag],
                                    [gamma * photo.bias[hashtag], gamma]])
        hidden = [self._photo_rows[p] for p in self.owners.hidden_from(user)]
        scores, ids = self.photo_index.search(query[None, :], k, excluded=hidden)
        return [(self.photo_ids[i], float(s)) for s, i in zip(scores[0], ids[0], strict=True)
                if i >= 0]

    def forget(self, user: str, photo: str | None = None) -> tuple[list[str], bool]:
        """Takes back ``user``'s upload ``photo``, or (None) everything of theirs: their
        uploads, request ids and profile (their rows reset to a stranger's and their id
        dropped, so a new account by that id starts afresh). Returns (the photos taken
        back, whether a profile was removed)."""
        with self.lock:
            released = self.owners.release(user, photo)
            if photo is not None:
                return released, False
            self.requests.forget(user)
            self.communities.forget(user)
            row = self.user_index.pop(user, None)
            if row is None:
                return released, False
            self.user_ids[row] = ""  # a tombstone: rows keep their places
            self.user_vectors[row] = self.mean_user
            self.post_counts[row] = 0.0
            self.user_hashtags.reset(row)
            return released, True

    @property
    def expected_uses(self) -> np.ndarray:
        """E_kh: users × hashtags, how often each user's photos predict each hashtag
        (dense, made on each call: for the model's artifact and for tests)."""
        if self.effects is None:
            raise AttributeError("a lookup without main effects has no expected uses")
        return self.user_hashtags.dense()[1]

    @property
    def hashtag_counts(self) -> np.ndarray:
        """c_kh: users × hashtags (dense, made on each call, as ``expected_uses``)."""
        return self.user_hashtags.dense()[0]

    def known(self, user: str | None) -> bool:
        return user is not None and user in self.user_index

    def user_vector(self, user: str | None) -> np.ndarray:
        """u'_k by the cold-user rule in the module docstring."""
        if not self.known(user):
            return self.mean_user
        row = self.user_index[user]
        n = self.post_counts[row]
        shrunk = (n * self.user_vectors[row] + COLD_START_POSTS * self.mean_user) \
            / (n + COLD_START_POSTS)
        return shrunk.astype(np.float32)

    def log_lift(self, user: str | None, ids: np.ndarray | None = None) -> np.ndarray:
        """log lift_k(h) (without β) for every hashtag, or for ``ids`` only; 0 for a
        stranger or a model without main effects."""
        if self.effects is None or not self.known(user):
            return np.zeros(len(self.vocabulary) if ids is None else len(ids))
        row = self.user_index[user]
        if ids is None:
            return self.effects.log_lift(self.user_hashtags.counts(row),
                                         self.user_hashtags.expected(row))
        return self.effects.log_lift(*self.user_hashtags.at(row, np.asarray(ids)))

    def queries(self, features: np.ndarray, users: Sequence[str | None],
                agnostic: bool = False, photo_vectors: np.ndarray | None = None,
                ) -> np.ndarray:
        """[W^(u') f, γ x, γ] for each photo (only W^(u') f without main effects);
        ``agnostic``: everyone a stranger."""
        q = self.tensor_queries(features, users, agnostic, photo_vectors)
        if self.effects is None:
            return q.astype(np.float32)
        gamma = self.effects.gamma
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        return np.hstack([q, gamma * features, np.full((len(q), 1), gamma)]).astype(np.float32)

    def tensor_queries(self, features: np.ndarray, users: Sequence[str | None],
                       agnostic: bool = False, photo_vectors: np.ndarray | None = None,
                       ) -> np.ndarray:
        """q = W^(u') f for each photo (``photo_vectors``: the f, when known)."""
        vectors = np.stack([self.user_vector(None if agnostic else user) for user in users])
        if photo_vectors is None:
            photo_vectors = self.photo_vectors(features)
        # q = Σ_r u_r (W_r f): contract the photo first (E × D per photo), then the user.
        per_coordinate = self.core @ photo_vectors.T  # E × D × n
        return np.einsum("ne,edn->nd", vectors, per_coordinate)

    def photo_vectors(self, features: np.ndarray) -> np.ndarray:
        """f = P x (standardised features), one row per photo."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        return features @ self.projection + self.projection_bias

    def photo_parts(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(``photo_vectors``, ``_photo_normalisers``) of each photo; those of photos seen
        lately from memory, the rest computed as one batch."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in features]
        missing = [row for row, key in enumerate(keys) if key not in self._photo_parts]
        if missing:
            vectors = self.photo_vectors(features[missing])
            normalisers = self._photo_normalisers(features[missing])
            for at, row in enumerate(missing):
                self._photo_parts[keys[row]] = (vectors[at], float(normalisers[at]))
        parts = [self._photo_parts[key] for key in keys]
        for key in keys:
            self._photo_parts.move_to_end(key)
        while len(self._photo_parts) > PHOTO_MEMORY:
            self._photo_parts.popitem(last=False)
        return np.stack([v for v, _ in parts]), np.array([n for _, n in parts])

    def _photo_normalisers(self, features: np.ndarray) -> np.ndarray:
        """γ log Σ_h exp(A_h x + b_h) per photo: what T(h) leaves out of the score."""
        if self.effects is None:
            return np.zeros(len(np.atleast_2d(features)))
        return self.effects.gamma * log_normalisers(self.effects.content.logits(features))

    def top_k(self, features: np.ndarray, users: Sequence[str | None], k: int = 10,
              agnostic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, hashtag ids), best first: FAISS, then the threshold check of the
        module docstring."""
        with self.lock:  # one consistent state of each user's rows
            return self._top_k(features, users, k, agnostic)

    def _top_k(self, features: np.ndarray, users: Sequence[str | None], k: int,
               agnostic: bool) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.vocabulary))
        photo_vectors, normalisers = self.photo_parts(features)
        queries = self.queries(features, users, agnostic, photo_vectors)
        beta = 0.0 if self.effects is None else self.effects.beta
        out_scores = np.empty((len(users), k), np.float32)
        out_ids = np.empty((len(users), k), np.int64)
        # One search for the batch; a row whose threshold check fails searches deeper alone.
        # Each search reads every hashtag vector whatever its depth, so the first goes
        # FIRST_DEPTH times deeper than asked: fewer rows need a second read.
        first = min(FIRST_DEPTH * k, len(self.vocabulary))
        first_bounds, first_candidates = self.index.search(queries, first)
        for row, user in enumerate(users):
            user = None if agnostic else user
            used = (self.user_hashtags.used(self.user_index[user])
                    if self.known(user) and self.effects is not None
                    else np.zeros(0, np.int64))
            depth = first
            bounds, candidates = first_bounds[row:row + 1], first_candidates[row:row + 1]
            while True:
                ids = np.union1d(candidates[0], used)
                exact = self.index.vectors[ids] @ queries[row] - normalisers[row] \
                    + beta * self.log_lift(user, ids)
                order = np.argsort(-exact, kind="stable")[:k]
                # Any hashtag FAISS did not return and the user never used scores at
                # most the depth-th T (its lift ≤ 1); 1e-4 absorbs float32 rounding.
                threshold = bounds[0, -1] - normalisers[row]
                if depth >= len(self.vocabulary) or exact[order[-1]] >= threshold - 1e-4:
                    break
                depth = min(4 * depth, len(self.vocabulary))
                bounds, candidates = self.index.search(queries[row:row + 1], depth)
            out_scores[row], out_ids[row] = exact[order], ids[order]
        return out_scores, out_ids

    def scores(self, features: np.ndarray, users: Sequence[str | None],
               agnostic: bool = False, tensor: bool = True, effects: bool = True,
               ) -> np.ndarray:
        """Every hashtag's score (brute force; for evaluation and to check ``top_k``);
        ``tensor=False`` leaves out the three-way term (the main effects alone),
        ``effects=False`` the main effects (the tensor term alone)."""
        scores = (self.tensor_queries(features, users, agnostic) @ self.hashtag_vectors.T
                  if tensor else np.zeros((len(users), len(self.vocabulary))))
        if effects and self.effects is not None:
            lift = np.stack([self.log_lift(None if agnostic else user) for user in users])
            scores = scores + self.effects.beta * lift \
                + self.effects.gamma * self.effects.content.log_probabilities(features)
        return scores

    @property
    def tensor_active(self) -> bool:
        """Whether the three-way term contributes: False when early stopping kept epoch 0
        (the core W is zero), and then a user's embedding cannot move any score."""
        return bool(np.any(self.core))

    def update(self, user: str, features: np.ndarray, accepted: Sequence[int],
               steps: int = 30, learning_rate: float = 0.05) -> bool:
        """Learn from one post: this user's counts and expected uses grow (hence their lift)
        and, when the three-way term is active, their embedding takes ``steps`` Adam steps
        on the softmax likelihood of the accepted hashtags; nothing else changes. Returns
        whether the embedding moved. Safe beside concurrent readers: the new state is
        computed first, then published under ``lock``."""
        if not accepted:
            raise ValueError("an update needs at least one accepted hashtag")
        if any(not 0 <= i < len(self.vocabulary) for i in accepted):
            raise ValueError(f"hashtag ids must lie in [0, {len(self.vocabulary)})")
        accepted = sorted(set(accepted))
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        row = self.user_index.get(user)  # one writer at a time: read without the lock
        vector = (self.user_vectors[row] if row is not None else self.mean_user)
        photo_log_probabilities = np.zeros(len(self.vocabulary))
        if self.effects is not None:
            photo_log_probabilities = self.effects.content.log_probabilities(features)[0]
        moved = self.tensor_active
        if moved:
            # The main effects are the embedding's offset, taken before this post counts.
            offset = np.zeros(len(self.vocabulary))
            if self.effects is not None:
                offset = self.effects.beta * self.log_lift(user) \
                    + self.effects.gamma * photo_log_probabilities
            # q = W^(u) f is linear in u: q = u · A with A_r = W_r f, computed once.
            per_coordinate = (self.core @ self.photo_vectors(features)[0]).astype(np.float64)
            vector = _softmax_adam(vector, per_coordinate, self.hashtag_vectors, offset,
                                   accepted, steps, learning_rate)
        with self.lock:
            if row is None:
                row = self._add_user(user)
            self.user_vectors[row] = vector
            self.post_counts[row] += 1
            self.user_hashtags.add_post(row, accepted, None if self.effects is None else
                                        len(accepted) * np.exp(photo_log_probabilities))
        return moved

    def _add_user(self, user: str) -> int:
        """A new user's rows (ū, no posts); call with ``lock`` held."""
        row = len(self.user_ids)
        self.user_vectors = self._with_row("user_vectors", self.user_vectors, self.mean_user)
        self.post_counts = self._with_row("post_counts", self.post_counts, 0.0)
        self.user_hashtags.append()
        # Published last: a reader that finds the user finds every row.
        self.user_ids.append(user)
        self.user_index[user] = row
        return row

    def _with_row(self, name: str, rows: np.ndarray, fill: object) -> np.ndarray:
        """``rows`` and one more row set to ``fill``, as a view of a buffer with spare
        room: n new users cost O(n) row copies in all, not O(n²) (a replay of thousands
        of new users' posts would otherwise copy every user's rows for each)."""
        n = len(rows)
        buffer = self._spare_rows.get(name)
        if buffer is None or len(buffer) <= n or not np.shares_memory(buffer, rows):
            buffer = np.empty((max(2 * n, 16), *rows.shape[1:]), rows.dtype)
            buffer[:n] = rows
            self._spare_rows[name] = buffer
        buffer[n] = fill
        return buffer[:n + 1]

def _softmax_adam(vector: np.ndarray, per_coordinate: np.ndarray, hashtags: np.ndarray,
                  offset: np.ndarray, targets: Sequence[int], steps: int,
                  learning_rate: float, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8) -> np.ndarray:
    """Adam (as torch.optim.Adam) on u for L(u) = −mean_{t ∈ targets} log softmax(H (u A) +
    offset)_t, with its closed-form gradient ∇_u L = A Hᵀ (softmax − y), y = 1/|T| on the
    targets. Only u moves: the hashtag embeddings and the core stay as trained."""
    u = np.asarray(vector, dtype=np.float64).copy()
    hashtags = np.asarray(hashtags, dtype=np.float64)
    target = np.zeros(len(hashtags))
    target[list(targets)] = 1.0 / len(targets)
    first, second = np.zeros_like(u), np.zeros_like(u)
    for step in range(1, steps + 1):
        logits = hashtags @ (u @ per_coordinate) + offset
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        gradient = per_coordinate @ (hashtags.T @ (probabilities - target))
        first = betas[0] * first + (1 - betas[0]) * gradient
        second = betas[1] * second + (1 - betas[1]) * gradient ** 2
        corrected = np.sqrt(second / (1 - betas[1] ** step)) + eps
        u -= learning_rate * (first / (1 - betas[0] ** step)) / corrected
    return u.astype(np.float32)
