"""The main effects under the user tensor: what the content says on its own, and how a
user's habits differ from what their content predicts.

The content x is any feature vector of a post: a photo's CNN features (Veit et al.), or a
text's embedding (real users' posts, services/user/task.py); "content" below is either.

    content: log P(h | x) = log softmax(A x + b)_h        (Veit's user-agnostic MCLL model)
    habit:  log lift_u(h) = log (c_uh + a) / (E_uh + a),  E_uh = Σ_{j ∈ posts(u)} |H_j| P(h | x_j)

c_uh counts user u's uses of hashtag h. The tensor score (model.py) is

    s_u(h | x) = h_iᵀ W^(u) f  +  β log lift_u(h)  +  γ log P(h | x)

as the user and item biases under a matrix factorisation: the main effects carry what
the user and the photo say each on their own, the three-way term what they say together.

Why the lift and not the user's plain frequency P̃_u(h): users choose what they
photograph, so a food lover's P̃_u(food) is high *because* they post food photos;
multiplied with a food photo's evidence the topic counts twice and outranks the user's
real habits (a signature hashtag, a spelling, a language). The lift is ≈ 1 for what the
photos explain, > 1 for a habit ("comida" where the photos predict "food"), < 1 for
what the user avoids ("food" for that user), and 1 for a stranger: the photo decides.

(a, β, γ) are fit by likelihood on the training posts, each scored as a test post would
be: its photo term by a model that never saw it (out of fold), its lift without it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: smoothing a of the habit lift, chosen by likelihood on held-out training posts
LIFT_SMOOTHING = (0.25, 0.5, 1.0, 2.0)


def mean_log_likelihood(scores: np.ndarray, hashtags: Sequence[Sequence[int]]) -> float:
    """Mean over posts of Σ_h 1/|H_j| log softmax(scores_j)_h."""
    import torch

    from shared.losses import multiclass_log_loss, softmax_targets

    return -float(multiclass_log_loss(torch.from_numpy(scores.astype(np.float32)),
                                      softmax_targets(hashtags, scores.shape[1])))


def train_mcll(features: np.ndarray, hashtags: Sequence[Sequence[int]], n_hashtags: int,
               epochs: int = 10, weight_decay: float = 1e-2, seed: int = 0,
               ) -> torch.nn.Linear:
    """Veit's user-agnostic MCLL model on fixed CNN features: logits = A x + b, trained with
    the multi-class logistic loss. ``features`` must be standardised. torch is imported
    here, by training: the user service that serves the model never loads it."""
    import torch

    from shared.losses import multiclass_log_loss, softmax_targets

    torch.manual_seed(seed)
    classifier = torch.nn.Linear(features.shape[1], n_hashtags)
    inputs = torch.from_numpy(features.astype(np.float32))
    targets = softmax_targets(hashtags, n_hashtags)
    # fused: one pass over the V × d weights a step (the default loop is ~4× slower)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3, weight_decay=weight_decay,
                                  fused=True)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(128):
            optimizer.zero_grad()
            multiclass_log_loss(classifier(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    return classifier.eval()


@dataclass
class ContentModel:
    """log P(h | x) = log softmax(A x + b) on raw content features (photo or text;
    standardisation folded in)."""

    weight: np.ndarray  # V × d
    bias: np.ndarray  # V

    @classmethod
    def fit(cls, features: np.ndarray, hashtags: Sequence[Sequence[int]], n_hashtags: int,
            seed: int = 0) -> ContentModel:
        mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
        standard = ((features - mean) / scale).astype(np.float32)
        linear = train_mcll(standard, hashtags, n_hashtags, seed=seed)
        weight = linear.weight.detach().numpy().astype(np.float64) / scale
        bias = linear.bias.detach().numpy().astype(np.float64) - weight @ mean
        return cls(weight.astype(np.float32), bias.astype(np.float32))

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.atleast_2d(features).astype(np.float32) @ self.weight.T + self.bias

    def log_probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = self.logits(features).astype(np.float64)
        return logits - log_normalisers(logits)[:, None]


def log_normalisers(logits: np.ndarray) -> np.ndarray:
    """log Σ_h exp(logits_h) of each row, computed stably."""
    logits = np.atleast_2d(logits).astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]


def content_groups(features: np.ndarray) -> np.ndarray:
    """One id per distinct photo: rows with identical features (the same image content,
    however often it was posted) share an id."""
    _, groups = np.unique(np.ascontiguousarray(features), axis=0, return_inverse=True)
    return groups.reshape(-1)


def out_of_fold_content_model(features: np.ndarray, hashtags: Sequence[Sequence[int]],
                            n_hashtags: int, folds: int = 5, seed: int = 0,
                            ) -> tuple[np.ndarray, ContentModel]:
    """(log P(h | x_j) of every training post by a model that never saw its photo, as a
    test post would be scored; the photo model on every post). Folds are drawn by photo,
    not by post: a photo posted twice would otherwise be scored by a model trained on it."""
    out_of_fold = np.zeros((len(features), n_hashtags), dtype=np.float32)
    groups = content_groups(features)
    fold = np.random.default_rng([seed, 5]).permutation(groups.max() + 1)[groups] % folds
    for k in range(folds):
        rows = np.flatnonzero(fold != k)
        model = ContentModel.fit(features[rows], [hashtags[i] for i in rows], n_hashtags, seed)
        out_of_fold[fold == k] = model.log_probabilities(features[fold == k])
    return out_of_fold, ContentModel.fit(features, hashtags, n_hashtags, seed)


def expected_uses(photo_log_probabilities: np.ndarray, hashtags: Sequence[Sequence[int]],
                  ) -> np.ndarray:
    """E_j(h) = |H_j| P(h | x_j): how often post j's photo alone predicts each hashtag."""
    sizes = np.array([len(ids) for ids in hashtags], dtype=np.float64)
    return np.exp(photo_log_probabilities.astype(np.float64)) * sizes[:, None]


def habit_lift(counts: np.ndarray, expected: np.ndarray, smoothing: float) -> np.ndarray:
    """log (c_uh + a) / (E_uh + a) (module docstring). Never above 0 for a hashtag the user
    has not used, which keeps the lookup's FAISS search exact (services/user/lookup.py)."""
    return np.log(counts + smoothing) - np.log(expected + smoothing)


#: the most posts the two weights of a product of experts are fit on: two numbers need no
#: more, and every step reads posts × vocabulary (on real users, 14k × 5k: minutes a fit)
EXPERT_FIT_ROWS = 4096


def fit_expert_weights(first: np.ndarray, second: np.ndarray,
                       hashtags: Sequence[Sequence[int]],
                       max_rows: int = EXPERT_FIT_ROWS) -> tuple[float, float]:
    """(β, γ) ≥ 0 maximising the mean log-likelihood of each post's hashtags under
    softmax_h(β first(h) + γ second(h)), a product of two experts, on at most ``max_rows``
    posts (a seeded sample). The rows must be held out from what made them. γ = 0 means
    the second adds nothing to the first.

    The log-likelihood is concave in (β, γ) (a log-softmax of a linear function), so
    L-BFGS-B within the bounds reaches its maximum in a few dozen evaluations, where a
    fixed 200 Adam steps took ten times as many and stopped wherever they were."""
    import torch
    from scipy.optimize import minimize

    from shared.losses import multiclass_log_loss, softmax_targets

    if len(hashtags) > max_rows:
        rows = np.sort(np.random.default_rng(0).choice(len(hashtags), max_rows,
                                                       replace=False))
        first, second = np.asarray(first)[rows], np.asarray(second)[rows]
        hashtags = [hashtags[i] for i in rows]
    first_t = torch.from_numpy(np.asarray(first, dtype=np.float32))
    second_t = torch.from_numpy(np.asarray(second, dtype=np.float32))
    tags = softmax_targets(hashtags, first_t.shape[1])

    def loss_and_gradient(weights: np.ndarray) -> tuple[float, np.ndarray]:
        beta, gamma = torch.tensor(weights, dtype=torch.float64,
                                   requires_grad=True).unbind()
        loss = multiclass_log_loss(beta.float() * first_t + gamma.float() * second_t, tags)
        grads = torch.autograd.grad(loss, [beta, gamma])
        return loss.item(), np.array([g.item() for g in grads])

    fit = minimize(loss_and_gradient, x0=np.array([1.0, 1.0]), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None), (0.0, None)])
    beta, gamma = (float(w) for w in fit.x)
    return beta, gamma


@dataclass
class MainEffects:
    """β log lift_u(h) + γ log P(h | x), ready to serve (module docstring)."""

    content: ContentModel
    expected: np.ndarray  # users × V: E_uh from the out-of-fold photo model
    smoothing: float  # a
    beta: float
    gamma: float

    def log_lift(self, counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
        return habit_lift(counts, expected, self.smoothing)


@dataclass
class HeldOutEffects:
    """The main effects' inputs for each training post as a test post would see them
    (unweighted: the tensor's offsets are β lift + γ out_of_fold)."""

    lift: np.ndarray  # posts × V: log lift of the post's user without the post
    out_of_fold: np.ndarray  # posts × V: log P(h | x) by a model that never saw the post
    user_lift: np.ndarray  # users × V: log lift of each user from all their posts


def fit_main_effects(features: np.ndarray, hashtags: Sequence[Sequence[int]],
                     user_rows: np.ndarray, counts: np.ndarray, held_out_counts: np.ndarray,
                     seed: int = 0) -> tuple[MainEffects, HeldOutEffects]:
    """Fits the photo model, the users' expected uses and (a, β, γ) on the training posts;
    ``counts`` are the users' hashtag counts (users × V), ``held_out_counts`` each post's
    user's counts without the post (posts × V)."""
    n_hashtags = counts.shape[1]
    out_of_fold, photo = out_of_fold_content_model(features, hashtags, n_hashtags, seed=seed)
    per_post_expected = expected_uses(out_of_fold, hashtags)
    expected = np.zeros(counts.shape)
    np.add.at(expected, user_rows, per_post_expected)
    held_out_expected = expected[user_rows] - per_post_expected
    best: tuple[float, float, float, float] | None = None  # (likelihood, a, β, γ)
    for smoothing in LIFT_SMOOTHING:
        lift = habit_lift(held_out_counts, held_out_expected, smoothing)
        beta, gamma = fit_expert_weights(lift, out_of_fold, hashtags)
        likelihood = mean_log_likelihood(beta * lift + gamma * out_of_fold, hashtags)
        if best is None or likelihood > best[0]:
            best = (likelihood, smoothing, beta, gamma)
    assert best is not None
    likelihood, smoothing, beta, gamma = best
    log.info("main effects: lift smoothing %.2f, beta %.3f, gamma %.3f (held-out "
             "log-likelihood %.3f)", smoothing, beta, gamma, likelihood)
    effects = MainEffects(photo, expected, smoothing, beta, gamma)
    held_out = HeldOutEffects(
        habit_lift(held_out_counts, held_out_expected, smoothing).astype(np.float32),
        out_of_fold, habit_lift(counts, expected, smoothing).astype(np.float32))
    return effects, held_out


def user_shares(counts: np.ndarray, global_share: np.ndarray) -> np.ndarray:
    """P_u(h) = c_uh / n_u for each row of ``counts`` (one user's uses); a row without a
    use (a stranger, or a user's first post) is the global share."""
    counts = np.atleast_2d(counts).astype(np.float32)
    totals = counts.sum(axis=1, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1.0),
                    np.asarray(global_share, dtype=np.float32)[None, :])


#: the mixture's experts, in the order of its weights
MIXTURE_EXPERTS = ("user", "photo", "neighbours")
#: the weights are chosen from the simplex in steps of this size
MIXTURE_STEP = 0.1


@dataclass(frozen=True)
class Mixture:
    """The main effects as a mixture of three experts, each a distribution over hashtags:

        P(h | x, u) = w_user P_u(h) + w_photo P(h | x) + w_neighbours P_nn(h | x)

    P_u the user's own shares (user_shares), P(h | x) the photo model (MCLL), P_nn the
    similarity-weighted votes of the content's nearest training posts. A mixture, not a
    product: a user's signature hashtag keeps its w_user P_u(h) whatever the content says,
    and what the content says still counts for a hashtag the user never used. On real users
    (#HowYouTagTweets) the sum of two such distributions beats the product of experts
    (habit_x_photo) at A@1."""

    weights: tuple[float, ...]

    def probabilities(self, experts: Sequence[np.ndarray]) -> np.ndarray:
        """The mixture of the experts' distributions (rows of posts × hashtags each)."""
        return sum((np.float32(w) * np.asarray(e, dtype=np.float32)
                    for w, e in zip(self.weights, experts, strict=True)),
                   np.zeros_like(experts[0], dtype=np.float32))

    @classmethod
    def fit(cls, experts: Sequence[np.ndarray], hashtags: Sequence[Sequence[int]],
            step: float = MIXTURE_STEP) -> Mixture:
        """The weights on the simplex grid with the best A@1 + A@10 of ``hashtags`` (the
        criterion of the tensor's early stopping); each expert's rows must be held out
        from what made them (the post left out of its user's counts and its neighbours,
        its photo scored out of fold)."""
        from shared.eval.metrics import accuracy_at_k, top_k

        truth = [frozenset(ids) for ids in hashtags]
        steps = round(1 / step)
        best: tuple[float, tuple[float, float, float]] | None = None
        for i in range(steps + 1):
            for j in range(steps + 1 - i):
                weights = (i / steps, j / steps, (steps - i - j) / steps)
                ranked = top_k(cls(weights).probabilities(experts), 10)
                score = accuracy_at_k(ranked, truth, 1) + accuracy_at_k(ranked, truth, 10)
                if best is None or score > best[0]:
                    best = (score, weights)
        assert best is not None
        log.info("mixture: weights %s = %s (held-out A@1 + A@10 %.2f)",
                 MIXTURE_EXPERTS, best[1], best[0])
        return cls(best[1])

    def extended(self, experts: Sequence[np.ndarray], more: Sequence[np.ndarray],
                 hashtags: Sequence[Sequence[int]], step: float = MIXTURE_STEP) -> Mixture:
        """More experts, each taking a share of this mixture: weights (1 − Σ s) · w + s
        with the shares s on a grid of ``step`` (searching the whole larger simplex costs
        a thousand rankings of every post at five experts), chosen as ``fit`` chooses;
        all shares 0 keeps this mixture."""
        import itertools

        from shared.eval.metrics import accuracy_at_k, top_k

        truth = [frozenset(ids) for ids in hashtags]
        steps = round(1 / step)
        base = self.probabilities(experts)
        best: tuple[float, tuple[float, ...]] | None = None
        for counts in itertools.product(range(steps + 1), repeat=len(more)):
            if sum(counts) > steps:
                continue
            shares = tuple(c / steps for c in counts)
            mixed = np.float32(1 - sum(shares)) * base
            for share, expert in zip(shares, more, strict=True):
                mixed += np.float32(share) * np.asarray(expert, dtype=np.float32)
            ranked = top_k(mixed, 10)
            score = accuracy_at_k(ranked, truth, 1) + accuracy_at_k(ranked, truth, 10)
            if best is None or score > best[0]:
                best = (score, shares)
        assert best is not None
        shares = best[1]
        log.info("mixture extended: shares %s (held-out A@1 + A@10 %.2f)", shares, best[0])
        return Mixture((*(round(w * (1 - sum(shares)), 6) for w in self.weights),
                        *shares))
