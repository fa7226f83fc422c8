"""Veit et al.'s user experiments on the simulated-user benchmark (or real user ids).

- tagging: A@1, A@10 of `global_frequency`, `user_frequency`, `agnostic` (the tensor model
  with the user averaged out), `mcll` (Veit's user-agnostic photo model: softmax
  regression of the hashtags on the photo's CNN features, multi-class logistic loss),
  `habit_x_photo` (a product of two experts, no tensor: β log P̃_u(h) + γ log
  P_mcll(h | x) / P(h), β and γ fit by likelihood on out-of-fold training posts; see
  `fit_habit_x_photo`), `mlp` (Veit's concatenation of photo feature and user embedding
  into an MLP) and `tensor` (user-conditional, cold-user rule of
  services/user/lookup.py);
- retrieval: hashtag (+ the photo's poster) → test photos, P@10 (Veit eq. 8) averaged over
  the hashtags that tag at least one test photo.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from services.user.lookup import UserHashtagLookup, smoothed_log_prior
from services.user.model import TensorModel, TensorParams, Triplets, train_tensor
from services.vision.store import FeatureStore
from shared.data.normalize import Vocabulary
from shared.data.readers import Post
from shared.data.simulated_users import drop_spammers, split_by_user_time
from shared.eval.metrics import accuracy_at_k, top_k

log = logging.getLogger(__name__)


def softmax_targets(hashtags: Sequence[Sequence[int]], n_hashtags: int) -> torch.Tensor:
    """Each post's target distribution for the multi-class logistic loss: 1/|H_j| on each
    of its hashtags."""
    targets = torch.zeros(len(hashtags), n_hashtags)
    for row, ids in enumerate(hashtags):
        targets[row, list(ids)] = 1.0 / len(ids)
    return targets


def multiclass_log_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Veit's multi-class logistic loss: −mean_j Σ_h t_jh log softmax(logits_j)_h, with
    ``targets`` from softmax_targets."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def train_user_mlp(features: np.ndarray, hashtags: Sequence[Sequence[int]],
                   user_rows: np.ndarray, n_users: int, n_hashtags: int, epochs: int = 30,
                   seed: int = 0) -> torch.nn.Module:
    """Veit's "concatenation + MLP" user model: [P x ; u] → ReLU(512) → hashtag logits,
    trained with the softmax likelihood of each post's hashtags."""
    torch.manual_seed(seed)

    class ConcatMlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.users = torch.nn.Embedding(n_users + 1, 50)  # last row: unknown user
            self.project = torch.nn.Linear(features.shape[1], 300)
            self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                            torch.nn.Linear(350, 512), torch.nn.ReLU(),
                                            torch.nn.Linear(512, n_hashtags))

        def forward(self, x: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.project(x), self.users(users)], dim=1))

    network = ConcatMlp()
    inputs = torch.from_numpy(features.astype(np.float32))
    targets = softmax_targets(hashtags, n_hashtags)
    users = torch.from_numpy(user_rows.astype(np.int64))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        network.train()
        for batch in torch.randperm(len(inputs), generator=generator).split(128):
            optimizer.zero_grad()
            multiclass_log_loss(network(inputs[batch], users[batch]), targets[batch]).backward()
            optimizer.step()
    return network.eval()


def train_mcll(features: np.ndarray, hashtags: Sequence[Sequence[int]], n_hashtags: int,
               epochs: int = 10, weight_decay: float = 1e-2, seed: int = 0,
               ) -> torch.nn.Linear:
    """Veit's user-agnostic MCLL model on fixed CNN features: logits = A x + b, trained with
    the multi-class logistic loss (softmax, each post's hashtags weighted 1/|H_j|).
    ``features`` must be standardised."""
    torch.manual_seed(seed)
    classifier = torch.nn.Linear(features.shape[1], n_hashtags)
    inputs = torch.from_numpy(features.astype(np.float32))
    targets = softmax_targets(hashtags, n_hashtags)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(128):
            optimizer.zero_grad()
            multiclass_log_loss(classifier(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    return classifier.eval()


def mcll_log_probabilities(x_train: np.ndarray, train_ids: Sequence[Sequence[int]],
                           x_test: np.ndarray, n_hashtags: int, folds: int = 5,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """log P_mcll(h | x) for the training posts out of fold (each post scored by a model
    that never saw it, as a test post would be) and for the test posts (a model on every
    training post)."""
    train, test = standardize(x_train, x_train), standardize(x_test, x_train)

    def log_probabilities(rows: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        model = train_mcll(train[rows], [train_ids[i] for i in rows], n_hashtags, seed=seed)
        with torch.no_grad():
            return torch.log_softmax(model(torch.from_numpy(inputs)), dim=1).numpy()

    fold = np.arange(len(train)) % folds
    out_of_fold = np.zeros((len(train), n_hashtags), dtype=np.float32)
    for k in range(folds):
        out_of_fold[fold == k] = log_probabilities(np.flatnonzero(fold != k), train[fold == k])
    return out_of_fold, log_probabilities(np.arange(len(train)), test)


def fit_habit_x_photo(log_user_prior: np.ndarray, photo_evidence: np.ndarray,
                      hashtags: Sequence[Sequence[int]], steps: int = 200,
                      ) -> tuple[float, float]:
    """(β, γ) ≥ 0 maximising the mean log-likelihood of each post's hashtags under
    softmax_h(β log P̃_u(h) + γ e(h)), with e(h) = log P(h | x) / P(h) the photo's evidence.
    The rows must be held out from what made them: each post's prior without the post
    (leave-one-out counts), its photo evidence out of fold. γ = 0 means the photo adds
    nothing to the user's habits; β = 0 that the habits add nothing to the photo."""
    prior = torch.from_numpy(np.asarray(log_user_prior, dtype=np.float32))
    evidence = torch.from_numpy(np.asarray(photo_evidence, dtype=np.float32))
    tags = softmax_targets(hashtags, prior.shape[1])
    raw = torch.zeros(2, requires_grad=True)  # softplus(raw) = (β, γ)
    optimizer = torch.optim.Adam([raw], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        beta, gamma = torch.nn.functional.softplus(raw)
        multiclass_log_loss(beta * prior + gamma * evidence, tags).backward()
        optimizer.step()
    beta, gamma = torch.nn.functional.softplus(raw).tolist()
    return beta, gamma


def expected_uses(photo_log_probabilities: np.ndarray, hashtags: Sequence[Sequence[int]],
                  ) -> np.ndarray:
    """E_j(h) = |H_j| P(h | x_j): how often post j's photo alone predicts each hashtag."""
    sizes = np.array([len(ids) for ids in hashtags], dtype=np.float64)
    return np.exp(photo_log_probabilities.astype(np.float64)) * sizes[:, None]


def habit_lift(counts: np.ndarray, expected: np.ndarray, smoothing: float) -> np.ndarray:
    """log (c_uh + a) / (E_uh + a): how much more (or less) user u writes hashtag h than the
    photos they posted predict, c_uh their uses and E_uh = Σ_j E_j(h) over their posts.

    Why not the plain habit P̃_u(h): users choose what they photograph, so a food lover's
    P̃_u(food) is high *because* they post food photos; multiplied with a food photo's
    evidence, the topic counts twice and outranks the user's real habits (their signature
    hashtags, spelling, language). The lift is ≈ 1 for a topic the photos explain, > 1 for
    a habit (a signature; "comida" where the photos predict "food"), < 1 for what the user
    avoids ("food" for that user). A stranger's lift is 1: the photo alone decides."""
    return np.log(counts + smoothing) - np.log(expected + smoothing)


#: smoothing a of the habit lift, chosen per run by out-of-fold likelihood (lift_x_photo)
LIFT_SMOOTHING = (0.25, 0.5, 1.0, 2.0)


def fitted_lift_x_photo(task: UserTask, out_of_fold: np.ndarray, test_log_probabilities:
                        np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Scores β log lift_u(h) + γ log P_mcll(h | x) for the test posts, with (a, β, γ) fit
    by likelihood on the training posts held out as in fit_habit_x_photo: each post's lift
    leaves the post out of its user's counts and expected uses, its photo evidence and
    every expected use come out of fold."""
    expected_per_post = expected_uses(out_of_fold, task.train_ids)
    expected = np.zeros(task.counts.shape)
    np.add.at(expected, task.rows_train, expected_per_post)
    best: tuple[float, float, float, float] | None = None  # (likelihood, a, β, γ)
    for smoothing in LIFT_SMOOTHING:
        lift = habit_lift(task.leave_one_out_counts,
                          expected[task.rows_train] - expected_per_post, smoothing)
        beta, gamma = fit_habit_x_photo(lift, out_of_fold, task.train_ids)
        likelihood = mean_log_likelihood(beta * lift + gamma * out_of_fold, task.train_ids)
        if best is None or likelihood > best[0]:
            best = (likelihood, smoothing, beta, gamma)
    assert best is not None
    _, smoothing, beta, gamma = best
    test_lift = np.stack([habit_lift(task.counts[task.user_row[u]],
                                     expected[task.user_row[u]], smoothing)
                          if u in task.user_row else np.zeros(len(task.vocab))
                          for u in task.test_users])
    return beta * test_lift + gamma * test_log_probabilities, {
        "smoothing": smoothing, "beta": round(beta, 3), "gamma": round(gamma, 3)}


def mean_log_likelihood(scores: np.ndarray, hashtags: Sequence[Sequence[int]]) -> float:
    """Mean over posts of Σ_h 1/|H_j| log softmax(scores_j)_h."""
    return -float(multiclass_log_loss(torch.from_numpy(scores.astype(np.float32)),
                                      softmax_targets(hashtags, scores.shape[1])))


@dataclass
class UserResult:
    n_users: int
    n_train: int
    n_test: int
    vocab: int
    results: dict[str, dict[str, float]]
    retrieval: dict[str, dict[str, float]]
    lookup: UserHashtagLookup
    #: one test post of the user with the most training posts: its hashtags and the top 5
    #: before (agnostic) and after (tensor) conditioning on the user
    example: dict[str, object]
    #: β and γ of habit_x_photo, fit on out-of-fold training posts
    habit_x_photo: dict[str, float]
    #: a, β and γ of lift_x_photo, fit on out-of-fold training posts
    lift_x_photo: dict[str, float] = dataclasses.field(default_factory=dict)


def retrieval_precision(scores: np.ndarray, truth: Sequence[frozenset[int]],
                        k: int = 10) -> float:
    """P@k of ranking the photos (rows) for each hashtag (column) that tags some photo."""
    relevant = np.zeros(scores.shape, dtype=bool)
    for row, ids in enumerate(truth):
        relevant[row, list(ids)] = True
    queried = np.flatnonzero(relevant.any(axis=0))
    top = top_k(scores[:, queried].T, k)  # hashtags × k photo rows
    hits = np.take_along_axis(relevant[:, queried].T, top, axis=1)
    return 100 * float(hits.sum(axis=1).mean() / k)


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

    @functools.cached_property
    def leave_one_out_counts(self) -> np.ndarray:
        """Each training post's user's counts without that post (posts × hashtags): what
        the user's habit says of a post it never saw, as it would of a test post."""
        own = _counts(self.train_ids, np.arange(len(self.train_ids)),
                      (len(self.train_ids), len(self.vocab)))
        return self.counts[self.rows_train] - own

    def train_lookup(self, params: TensorParams, progress: bool = True) -> UserHashtagLookup:
        """Trains the tensor model with early stopping: each user's last training post
        (users with two or more) is held out, and the epoch with the best A@1 + A@10 on
        those posts is kept, together with the serving weight β of the user prior
        (PRIOR_WEIGHTS; the tensor was trained with ``params.prior_weight``: a larger β
        trusts the photo less). The lookup then counts every training post."""
        last = {row: i for i, row in enumerate(self.rows_train)}
        held_out = sorted(i for row, i in last.items()
                          if np.count_nonzero(self.rows_train == row) >= 2)
        fit = np.setdiff1d(np.arange(len(self.rows_train)), held_out)
        fit_ids = [self.train_ids[i] for i in fit]
        fit_counts = _counts(fit_ids, self.rows_train[fit], self.counts.shape)
        fit_posts = np.bincount(self.rows_train[fit], minlength=len(self.users))
        held_users = [self.users[self.rows_train[i]] for i in held_out]
        held_truth = [frozenset(self.train_ids[i]) for i in held_out]
        chosen: list[tuple[float, float]] = []  # (validation score, β), one per call

        def validate(model: TensorModel) -> float:
            lookup = UserHashtagLookup(model, self.vocab.terms, self.users, fit_posts,
                                       fit_counts)
            tensor = lookup.scores(self.x_train[held_out], held_users, prior=False)
            prior = np.stack([lookup.log_user_prior(u) for u in held_users])
            weights = PRIOR_WEIGHTS if params.prior_weight > 0 else (0.0,)
            # Accuracy, not held-out log-likelihood: on the benchmark the likelihood
            # favoured an early epoch and a small β that ranked worse.
            found = [(sum(accuracies(tensor + beta * prior, held_truth).values()), beta)
                     for beta in weights]
            # Ties (e.g. a tensor term still zero) keep the β the tensor was trained with.
            chosen.append(max(found, key=lambda pair: (
                pair[0], -abs(pair[1] - params.prior_weight))))
            return chosen[-1][0]

        model = train_tensor(self.x_train[fit], Triplets.from_posts(fit_ids,
                                                                    self.rows_train[fit]),
                             len(self.vocab), len(self.users), params, progress,
                             validate if held_out else None)
        if chosen:
            best = max(range(len(chosen)), key=lambda i: (chosen[i][0], -i))
            model.params = dataclasses.replace(params, prior_weight=chosen[best][1])
            log.info("user prior weight %.2f (validation A@1 + A@10 %.2f)",
                     chosen[best][1], chosen[best][0])
        post_counts = np.bincount(self.rows_train, minlength=len(self.users)).astype(float)
        return UserHashtagLookup(model, self.vocab.terms, self.users, post_counts,
                                 self.counts)


#: serving weights of the user prior tried on the held-out posts (see train_lookup)
PRIOR_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 32.0)


def _counts(hashtags: Sequence[Sequence[int]], rows: np.ndarray,
            shape: tuple[int, int]) -> np.ndarray:
    counts = np.zeros(shape)
    for row, ids in zip(rows, hashtags, strict=True):
        counts[row, list(set(ids))] += 1
    return counts


def prepare_user_task(train_posts: Sequence[Post], test_posts: Sequence[Post],
                      features: dict[str, np.ndarray], min_count: int = 3,
                      max_vocab: int = 2000) -> UserTask:
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
    return UserTask(vocab, users, user_row, train_ids, rows_train,
                    _rows(features, train), [p.user for p in test], _rows(features, test),
                    [frozenset(ids) for ids in test_ids], counts)


def _rows(features: dict[str, np.ndarray], posts: Sequence[Post]) -> np.ndarray:
    dim = len(next(iter(features.values()))) if features else 0
    return np.stack([features[p.id] for p in posts]) if posts else np.zeros((0, dim))


def user_frequency_scores(task: UserTask) -> np.ndarray:
    """Each test post's user's hashtag counts (global counts for strangers; the global
    counts also break ties, never outweighing one use)."""
    global_counts = task.counts.sum(axis=0)
    tie_break = global_counts / (global_counts.sum() * 10)
    return np.stack([task.counts[task.user_row[u]] + tie_break if u in task.user_row
                     else global_counts for u in task.test_users])


def accuracies(scores: np.ndarray, truth: Sequence[frozenset[int]]) -> dict[str, float]:
    ranked = top_k(scores, 10)
    return {"A@1": round(accuracy_at_k(ranked, truth, 1), 2),
            "A@10": round(accuracy_at_k(ranked, truth, 10), 2)}


def run_user(train_posts: Sequence[Post], test_posts: Sequence[Post],
             features: dict[str, np.ndarray], params: TensorParams | None = None,
             min_count: int = 3, max_vocab: int = 2000, seed: int = 0,
             progress: bool = True) -> UserResult:
    """``features`` maps each post id to its photo's CNN features."""
    params = params or TensorParams(seed=seed)
    task = prepare_user_task(train_posts, test_posts, features, min_count, max_vocab)
    lookup = task.train_lookup(params, progress)
    vocab, users, user_row, truth = task.vocab, task.users, task.user_row, task.truth
    x_train, x_test, test_users = task.x_train, task.x_test, task.test_users
    train_ids, rows_train = task.train_ids, task.rows_train

    scores = {"global_frequency": np.tile(task.counts.sum(axis=0), (len(x_test), 1)),
              "user_frequency": user_frequency_scores(task)}
    scores["agnostic"] = lookup.scores(x_test, test_users, agnostic=True)
    out_of_fold, scores["mcll"] = mcll_log_probabilities(x_train, train_ids, x_test,
                                                         len(vocab), seed=seed)
    scores["habit_x_photo"], combination = habit_x_photo_scores(task, lookup, out_of_fold,
                                                                scores["mcll"])
    log.info("habit x photo: beta %.3f, gamma %.3f", *combination)
    scores["lift_x_photo"], lift_weights = fitted_lift_x_photo(task, out_of_fold,
                                                               scores["mcll"])
    log.info("lift x photo: %s", lift_weights)
    mlp = train_user_mlp(standardize(x_train, x_train), train_ids, rows_train, len(users),
                         len(vocab), seed=seed)
    with torch.no_grad():
        unknown = len(users)
        test_rows = torch.tensor([user_row.get(u, unknown) for u in test_users])
        scores["mlp"] = mlp(torch.from_numpy(standardize(x_test, x_train)), test_rows).numpy()
    scores["tensor"] = lookup.scores(x_test, test_users)
    results = {name: accuracies(method_scores, truth) for name, method_scores in scores.items()}
    for name, row in results.items():
        log.info("%s: %s", name, row)
    retrieval = {name: {"P@10": round(retrieval_precision(scores[name], truth), 2)}
                 for name in ("agnostic", "mlp", "tensor")}
    post_counts = np.bincount(rows_train, minlength=len(users))
    row = max(range(len(x_test)), key=lambda i: (post_counts[user_row[test_users[i]]]
                                                 if test_users[i] in user_row else -1, -i))
    terms = vocab.terms

    def top5(name: str) -> list[str]:
        return [terms[h] for h in top_k(scores[name][row:row + 1], 5)[0]]

    example = {"user": test_users[row], "truth": sorted(terms[h] for h in truth[row]),
               "agnostic": top5("agnostic"), "tensor": top5("tensor"),
               "habit_x_photo": top5("habit_x_photo"), "lift_x_photo": top5("lift_x_photo")}
    return UserResult(len(users), len(x_train), len(x_test), len(vocab), results, retrieval,
                      lookup, example,
                      {"beta": round(combination[0], 3), "gamma": round(combination[1], 3)},
                      lift_weights)


def habit_x_photo_scores(task: UserTask, lookup: UserHashtagLookup, out_of_fold: np.ndarray,
                         test: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """(habit × photo scores, (β, γ)) for the test posts from MCLL's out-of-fold and test
    log-probabilities (mcll_log_probabilities); the global share P(h), the prior strength
    and the test posts' priors are ``lookup``'s."""
    log_share = lookup.log_prior.astype(np.float64)
    train_prior = smoothed_log_prior(task.leave_one_out_counts, lookup.global_share,
                                     lookup.prior_strength)
    beta, gamma = fit_habit_x_photo(train_prior, out_of_fold - log_share, task.train_ids)
    test_prior = np.stack([lookup.log_user_prior(u) for u in task.test_users])
    return beta * test_prior + gamma * (test - log_share), (beta, gamma)


def standardize(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return ((features - reference.mean(axis=0)) / (reference.std(axis=0) + 1e-6)
            ).astype(np.float32)
