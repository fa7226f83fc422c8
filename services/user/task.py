"""The user models' task: posts encoded for them (in-vocabulary hashtags, user rows,
content features), the held-out posts that early stopping reads, and the tensor trained
over the main effects. `hashrec evaluate user` (commands/experiments/user.py) and the served
user model (train.py) both start here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.user.effects import (
    HeldOutEffects,
    MainEffects,
    Mixture,
    expected_uses,
    fit_main_effects,
    user_shares,
)
from services.user.lookup import UserHashtagLookup
from services.user.model import Offsets, TensorModel, TensorParams, Triplets, train_tensor
from services.user.recency import (
    RECENCY_HALF_LIVES,
    cooccurrence_counts,
    cooccurrence_expert,
    held_out_cooccurrence,
    held_out_recency,
    recency_shares,
    tag_matrix,
)
from services.vision.store import FeatureStore
from shared.data.normalize import Vocabulary
from shared.data.readers import Post
from shared.data.simulated_users import drop_spammers, split_by_user_time
from shared.eval.content import as_distribution, knn_vote_scores
from shared.eval.metrics import accuracy_at_k, top_k

log = logging.getLogger(__name__)


def post_features(posts: Sequence[Post], store: FeatureStore) -> dict[str, np.ndarray]:
    """Post id → CNN features of its photo, each distinct photo computed (or read) once;
    posts whose photo cannot be read are left out."""
    images = sorted({p.image for p in posts if p.image is not None})
    embedding, ok = store.embed_paths(images)
    by_image = {image: embedding.features[row] for row, image in enumerate(images) if ok[row]}
    return {p.id: by_image[p.image] for p in posts if p.image in by_image}


def split_with_features(posts: Sequence[Post], store: FeatureStore,
                        ) -> tuple[list[Post], list[Post], dict[str, np.ndarray]]:
    """Veit's spam filter and per-user time-ordered split, then each post's photo features;
    (train, test, features), posts whose photo cannot be read left out of both."""
    train, test = split_by_user_time(drop_spammers(posts))
    features = post_features((*train, *test), store)
    return ([p for p in train if p.id in features], [p for p in test if p.id in features],
            features)


def accuracies(scores: np.ndarray, truth: Sequence[frozenset[int]]) -> dict[str, float]:
    ranked = top_k(scores, 10)
    return {"A@1": round(accuracy_at_k(ranked, truth, 1), 2),
            "A@10": round(accuracy_at_k(ranked, truth, 10), 2)}


@dataclass
class UserTask:
    """Posts encoded for the user models: in-vocabulary hashtags, user rows, features."""

    vocab: Vocabulary
    users: list[str]
    user_row: dict[str, int]
    train_ids: list[list[int]]
    rows_train: np.ndarray
    x_train: np.ndarray
    test_users: list[str | None]
    x_test: np.ndarray
    truth: list[frozenset[int]]
    counts: np.ndarray  # users × hashtags, training posts
    #: each training post's time (seconds; NaN without one): the order recency reads
    times_train: np.ndarray | None = None
    _main_effects: dict[int, tuple[MainEffects, HeldOutEffects]] = dataclasses.field(
        default_factory=dict, repr=False)
    _mixtures: dict[int, tuple[Mixture, np.ndarray]] = dataclasses.field(
        default_factory=dict, repr=False)
    _held_experts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=dict, repr=False)

    @functools.cached_property
    def validation_rows(self) -> np.ndarray:
        """Each user's last training post (users with two or more): the tensor's early
        stopping scores these, so no fit ever sees them."""
        last = {row: i for i, row in enumerate(self.rows_train)}
        posts = np.bincount(self.rows_train, minlength=len(self.users))
        return np.array(sorted(i for row, i in last.items() if posts[row] >= 2), np.int64)

    @functools.cached_property
    def fit_rows(self) -> np.ndarray:
        """The training posts every model is fit on: all but ``validation_rows``."""
        return np.setdiff1d(np.arange(len(self.rows_train)), self.validation_rows)

    @property
    def fit_ids(self) -> list[list[int]]:
        return [self.train_ids[i] for i in self.fit_rows]

    @functools.cached_property
    def fit_counts(self) -> np.ndarray:
        """users × hashtags, counted over the fit posts."""
        return _counts(self.fit_ids, self.rows_train[self.fit_rows], self.counts.shape)

    @functools.cached_property
    def leave_one_out_counts(self) -> np.ndarray:
        """Each fit post's user's fit counts without that post (fit posts × hashtags): what
        the user's habit says of a post it never saw, as it would of a test post."""
        fit = self.fit_rows
        own = _counts(self.fit_ids, np.arange(len(fit)), (len(fit), len(self.vocab)))
        return self.fit_counts[self.rows_train[fit]] - own

    def main_effects(self, seed: int = 0) -> tuple[MainEffects, HeldOutEffects]:
        """The main effects fit on the fit posts (effects.py; the expected uses count those
        posts), and their held-out inputs for each fit post; computed once."""
        if seed not in self._main_effects:
            fit = self.fit_rows
            self._main_effects[seed] = fit_main_effects(
                self.x_train[fit], self.fit_ids, self.rows_train[fit], self.fit_counts,
                self.leave_one_out_counts, seed)
        return self._main_effects[seed]

    def served_effects(self, seed: int = 0) -> MainEffects:
        """The main effects with every training post's expected uses, for a lookup that
        counts every training post: a validation post's by the photo model, which never
        saw it."""
        effects, _ = self.main_effects(seed)
        validation = self.validation_rows
        expected = effects.expected.copy()
        np.add.at(expected, self.rows_train[validation], expected_uses(
            effects.content.log_probabilities(self.x_train[validation]),
            [self.train_ids[i] for i in validation]))
        return dataclasses.replace(effects, expected=expected)

    def train_lookup(self, params: TensorParams, progress: bool = True) -> UserHashtagLookup:
        """Fits the main effects on the fit posts, then trains the tensor over them with
        early stopping on each user's last training post (``validation_rows``): the epoch
        with the best A@1 + A@10 on those posts is kept (epoch 0: the main effects alone).
        The lookup then counts every training post."""
        effects, held = self.main_effects(params.seed)
        fit, held_out = self.fit_rows, self.validation_rows
        fit_posts = np.bincount(self.rows_train[fit], minlength=len(self.users))
        held_users = [self.users[self.rows_train[i]] for i in held_out]
        held_truth = [frozenset(self.train_ids[i]) for i in held_out]
        # A validation post is scored as a test post would be: its user's lift from the
        # fit posts, its photo by the photo model (which never saw it).
        held_lift = effects.log_lift(self.fit_counts[self.rows_train[held_out]],
                                     effects.expected[self.rows_train[held_out]])
        base = effects.beta * held_lift \
            + effects.gamma * effects.content.log_probabilities(self.x_train[held_out])

        def validate(model: TensorModel) -> float:
            lookup = UserHashtagLookup(model.weights(), self.vocab.terms, self.users, fit_posts,
                                       self.fit_counts)  # the tensor term alone
            tensor = lookup.scores(self.x_train[held_out], held_users)
            return sum(accuracies(tensor + base, held_truth).values())

        offsets = Offsets.from_arrays(effects.beta * held.lift,
                                      effects.gamma * held.out_of_fold,
                                      effects.beta * held.user_lift)
        model = train_tensor(self.x_train[fit], Triplets.from_posts(self.fit_ids,
                                                                    self.rows_train[fit]),
                             len(self.vocab), len(self.users), params, progress,
                             validate if len(held_out) else None, offsets)
        post_counts = np.bincount(self.rows_train, minlength=len(self.users)).astype(float)
        return UserHashtagLookup(model.weights(), self.vocab.terms, self.users, post_counts,
                                 self.counts, self.served_effects(params.seed))

    @functools.cached_property
    def global_share(self) -> np.ndarray:
        """Each hashtag's share of the fit posts' uses: a stranger's P_u."""
        uses = self.fit_counts.sum(axis=0)
        return uses / max(uses.sum(), 1.0)

    def mixture(self, seed: int = 0) -> tuple[Mixture, np.ndarray]:
        """(the mixture of user, photo and neighbours fit on the fit posts, its held-out
        probabilities for each fit post): each post scored as a test post would be, its
        user's shares without it, its photo out of fold, its neighbours without itself;
        computed once per seed."""
        if seed in self._mixtures:
            return self._mixtures[seed]
        _, held = self.main_effects(seed)
        fit = self.fit_rows
        experts = (user_shares(self.leave_one_out_counts, self.global_share),
                   np.exp(held.out_of_fold),
                   as_distribution(knn_vote_scores(self.x_train[fit], self.fit_ids, None,
                                                   len(self.vocab))))
        mixture = Mixture.fit(experts, self.fit_ids)
        self._mixtures[seed] = mixture, mixture.probabilities(experts)
        self._held_experts[seed] = experts
        return self._mixtures[seed]

    def held_out_experts(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mixture's three experts on the fit posts, each post held out (``mixture``):
        rows of the fit posts (``fit_ids``) × hashtags."""
        self.mixture(seed)
        return self._held_experts[seed]

    def mixture_experts(self, features: np.ndarray, users: Sequence[str | None],
                        counts: np.ndarray, posts: np.ndarray,
                        hashtags: Sequence[Sequence[int]], seed: int = 0,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three experts for new posts by ``users``: their shares from ``counts``
        (users × V), the photo model fit on the fit posts, the votes of ``posts`` (rows of
        x_train) tagged ``hashtags``."""
        effects, _ = self.main_effects(seed)
        votes = knn_vote_scores(self.x_train[posts], hashtags, features, len(self.vocab))
        return (self.user_shares_of(users, counts),
                np.exp(effects.content.log_probabilities(features)), as_distribution(votes))

    @functools.cached_property
    def recent_experts(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(the half-life, the recency and co-occurrence experts on the fit posts, each post
        held out: recency.py). The half-life is the one whose recency expert alone ranks
        the fit posts best (A@1 + A@10)."""
        fit_ids, rows = self.fit_ids, self.rows_train[self.fit_rows]
        times = None if self.times_train is None else self.times_train[self.fit_rows]
        tags = tag_matrix(fit_ids, len(self.vocab))
        truth = [frozenset(ids) for ids in fit_ids]
        tried = {}
        for half_life in RECENCY_HALF_LIVES:
            recent = held_out_recency(tags, rows, half_life, self.global_share, times)
            tried[half_life] = (sum(accuracies(recent, truth).values()), recent)
        half_life = max(tried, key=lambda h: (tried[h][0], -h))
        log.info("recency: half-life %g posts (held-out A@1 + A@10 by half-life: %s)",
                 half_life, {h: round(v, 2) for h, (v, _) in tried.items()})
        recent = tried[half_life][1]
        return half_life, recent, held_out_cooccurrence(recent, fit_ids,
                                                        cooccurrence_counts(tags))

    def recent_experts_of(self, users: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """The recency and co-occurrence experts for new posts by ``users``, from every
        training post (a stranger: the global share, and its co-occurrences)."""
        half_life = self.recent_experts[0]
        tags = tag_matrix(self.train_ids, len(self.vocab))
        shares = recency_shares(tags, self.rows_train, len(self.users), half_life,
                                self.global_share, self.times_train)
        recent = np.stack([shares[self.user_row[u]] if u in self.user_row
                           else np.asarray(self.global_share, np.float32) for u in users])
        return recent, cooccurrence_expert(recent, cooccurrence_counts(tags))

    def user_shares_of(self, users: Sequence[str | None], counts: np.ndarray) -> np.ndarray:
        """P_u(h) of each of ``users`` from ``counts`` (users × V); a stranger's is the
        global share."""
        rows = [self.user_row.get(u) if u is not None else None for u in users]
        return user_shares(np.stack([counts[r] if r is not None
                                     else np.zeros(len(self.vocab)) for r in rows]),
                           self.global_share)

    def train_mixture_tensor(self, params: TensorParams, progress: bool = True,
                             effects_seed: int = 0) -> tuple[UserHashtagLookup, Mixture]:
        """Veit's three-way term over the mixture (``mixture``, fit once with
        ``effects_seed``): the tensor learns only what the user and the content say together
        beyond it. Early stopping as ``train_lookup``'s (epoch 0: the mixture alone). The
        lookup scores the tensor term alone; add log P(h | x, u) of the mixture."""
        mixture, held = self.mixture(effects_seed)
        fit, held_out = self.fit_rows, self.validation_rows
        fit_posts = np.bincount(self.rows_train[fit], minlength=len(self.users))
        held_users = [self.users[self.rows_train[i]] for i in held_out]
        held_truth = [frozenset(self.train_ids[i]) for i in held_out]
        base = np.log(mixture.probabilities(self.mixture_experts(
            self.x_train[held_out], held_users, self.fit_counts, fit, self.fit_ids,
            effects_seed)) + MIXTURE_FLOOR) if len(held_out) else None

        def validate(model: TensorModel) -> float:
            lookup = UserHashtagLookup(model.weights(), self.vocab.terms, self.users, fit_posts,
                                       self.fit_counts)
            tensor = lookup.scores(self.x_train[held_out], held_users)
            return sum(accuracies(tensor + base, held_truth).values())

        model = train_tensor(self.x_train[fit], Triplets.from_posts(self.fit_ids,
                                                                    self.rows_train[fit]),
                             len(self.vocab), len(self.users), params, progress,
                             validate if len(held_out) else None,
                             Offsets.one_term(np.log(held + MIXTURE_FLOOR)))
        post_counts = np.bincount(self.rows_train, minlength=len(self.users)).astype(float)
        return UserHashtagLookup(model.weights(), self.vocab.terms, self.users, post_counts,
                                 self.counts), mixture


#: added to the mixture's probabilities before the log: a hashtag no expert gives any
#: probability stays rankable by the tensor term
MIXTURE_FLOOR = 1e-6


def _counts(hashtags: Sequence[Sequence[int]], rows: np.ndarray,
            shape: tuple[int, int]) -> np.ndarray:
    counts = np.zeros(shape)
    for row, ids in zip(rows, hashtags, strict=True):
        counts[row, list(set(ids))] += 1
    return counts


def prepare_user_task(train_posts: Sequence[Post], test_posts: Sequence[Post],
                      features: dict[str, np.ndarray], min_count: int = 3,
                      max_vocab: int | None = 2000) -> UserTask:
    """``features`` maps each post id to its photo's CNN features; posts left with no
    in-vocabulary hashtag are dropped."""
    vocab = Vocabulary.build([p.hashtags for p in train_posts], min_count, max_vocab)
    users = sorted({p.user for p in train_posts if p.user is not None})
    user_row = {user: row for row, user in enumerate(users)}

    def encode(posts: Sequence[Post]) -> tuple[list[Post], list[list[int]]]:
        kept = [(p, vocab.encode(p.hashtags)) for p in posts]
        kept = [(p, ids) for p, ids in kept if ids]
        return [p for p, _ in kept], [ids for _, ids in kept]

    train, train_ids = encode(train_posts)
    test, test_ids = encode(test_posts)
    rows_train = np.array([user_row[p.user] for p in train])
    counts = _counts(train_ids, rows_train, (len(users), len(vocab)))
    log.info("user task: %d users, vocabulary %d, %d train / %d test posts", len(users),
             len(vocab), len(train), len(test))
    times = np.array([p.time.timestamp() if p.time is not None else np.nan for p in train])
    return UserTask(vocab, users, user_row, train_ids, rows_train,
                    _rows(features, train), [p.user for p in test], _rows(features, test),
                    [frozenset(ids) for ids in test_ids], counts, times)


def _rows(features: dict[str, np.ndarray], posts: Sequence[Post]) -> np.ndarray:
    dim = len(next(iter(features.values()))) if features else 0
    return np.stack([features[p.id] for p in posts]) if posts else np.zeros((0, dim))
