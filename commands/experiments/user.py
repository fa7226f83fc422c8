"""Veit et al.'s user experiments on the simulated-user benchmark (or real user ids).

The content x of a post is its photo's CNN features or, for text posts by real users
(#HowYouTagTweets), its text's embedding (shared/eval/content.py); "photo" below means
either.

- tagging: A@1, A@10 of `global_frequency`, `user_frequency`, `content_knn` (the 50
  nearest training posts by cosine vote for their hashtags, weighted by similarity),
  `content_knn+user_frequency` (the sum of the two as distributions), `agnostic` (the tensor model
  with the user averaged out: the photo alone), `mcll` (Veit's user-agnostic photo model:
  softmax regression of the hashtags on the photo's CNN features), `habit_x_photo` (a
  product of two experts, no tensor: β log P̃_u(h) + γ log P_mcll(h | x) / P(h), β and γ
  fit by likelihood on out-of-fold training posts), `lift_x_photo` (the tensor model's
  main effects alone, services/user/effects.py: β log lift_u(h) + γ log P_mcll(h | x)),
  `mlp` (Veit's concatenation of photo feature and user embedding into an MLP) and
  `tensor` (the three-way term over those main effects, cold-user rule of
  services/user/lookup.py): tensor − lift_x_photo is what the three-way term adds;
  `mixture` (the main effects as a mixture of the user's own shares, the MCLL photo model
  and the content kNN votes, services/user/effects.py: Mixture, weights chosen on held-out
  training posts) and `mixture+tensor` (the three-way term over it; over several seeds with
  ``tensor_seeds``); `recommender_form` (the same experts combined as the recommender
  combines the photo methods and the user model: content scaled to [0, 1] plus a fitted
  weight times the user's relative probability, ``recommender_form_scores``); `served`
  (what the services serve, by their own code: the served user model's answer mixed with
  the user's habits, added to the content score, share and weight chosen on held-out
  training posts, ``served_scores``); `recency` (the user's hashtags weighted by
  2^(−age / T), age in the user's own posts, T chosen on held-out training posts),
  `cooccurrence` (the hashtags that go with those, services/user/recency.py) and
  `mixture+recency` (both as experts beside the mixture's three, their shares chosen on
  held-out training posts);
- retrieval: hashtag (+ the photo's poster) → test photos, P@10 (Veit eq. 8) averaged over
  the hashtags that tag at least one test photo.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from services.recommender.user_side import (
    USER_DEPTH,
    UserMixFit,
    UserWeightFit,
    condition_on_user,
    fit_user_mix,
    fit_user_weight,
    min_max_rows,
    mix_user_answers,
)
from services.user.effects import MIXTURE_EXPERTS, fit_expert_weights
from services.user.lookup import UserHashtagLookup
from services.user.model import TensorParams
from services.user.task import MIXTURE_FLOOR, UserTask, accuracies, prepare_user_task
from shared.data.readers import Post
from shared.eval.content import as_distribution, knn_vote_scores
from shared.eval.metrics import top_k
from shared.losses import multiclass_log_loss, softmax_targets

log = logging.getLogger(__name__)


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
    #: a, β and γ of the main effects (lift_x_photo), fit on out-of-fold training posts
    lift_x_photo: dict[str, float] = dataclasses.field(default_factory=dict)
    #: "seen" / "unseen": the test posts whose photo is / is not a training photo, their
    #: count and (when any) the table over them
    by_photo: dict[str, dict[str, object]] = dataclasses.field(default_factory=dict)
    #: every test post given, also those with no hashtag in the vocabulary (each a miss)
    n_test_all: int = 0
    results_all_posts: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    #: the mixture's weights (user, photo, neighbours), chosen on held-out training posts
    mixture: dict[str, float] = dataclasses.field(default_factory=dict)
    #: the three-way term over the mixture: each seed's A@1 / A@10, the gain's mean ± sd
    three_way: dict[str, object] = dataclasses.field(default_factory=dict)
    #: the table by the test post's user's number of training posts
    by_user_posts: dict[str, dict[str, object]] = dataclasses.field(default_factory=dict)
    #: recommender_form's user weight, and the held-out accuracy of every weight tried
    recommender_form: dict[str, object] = dataclasses.field(default_factory=dict)
    #: the served form's fit (fit_user_mix's ``about()``): the user model's share of the
    #: user side, its weight, and the held-out training posts' accuracy of each tried
    served: dict[str, object] = dataclasses.field(default_factory=dict)
    #: the recency expert's half-life (in the user's posts) and the weights of the mixture
    #: with the recency and co-occurrence experts, all chosen on held-out training posts
    recency: dict[str, object] = dataclasses.field(default_factory=dict)


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


def user_frequency_scores(task: UserTask) -> np.ndarray:
    """Each test post's user's hashtag counts (global counts for strangers; the global
    counts also break ties, never outweighing one use)."""
    global_counts = task.counts.sum(axis=0)
    tie_break = global_counts / (global_counts.sum() * 10)
    return np.stack([task.counts[task.user_row[u]] + tie_break if u in task.user_row
                     else global_counts for u in task.test_users])


def run_user(train_posts: Sequence[Post], test_posts: Sequence[Post],
             features: dict[str, np.ndarray], params: TensorParams | None = None,
             min_count: int = 3, max_vocab: int | None = 2000, seed: int = 0,
             progress: bool = True, tensor_seeds: Sequence[int] = ()) -> UserResult:
    """``features`` maps each post id to its photo's CNN features; ``tensor_seeds``: more
    seeds of the three-way term over the mixture (the mixture fixed), for its spread."""
    params = params or TensorParams(seed=seed)
    task = prepare_user_task(train_posts, test_posts, features, min_count, max_vocab)
    lookup = task.train_lookup(params, progress)
    vocab, users, user_row, truth = task.vocab, task.users, task.user_row, task.truth
    x_train, x_test, test_users = task.x_train, task.x_test, task.test_users
    train_ids, rows_train = task.train_ids, task.rows_train

    scores = {"global_frequency": np.tile(task.counts.sum(axis=0), (len(x_test), 1)),
              "user_frequency": user_frequency_scores(task)}
    scores["content_knn"] = knn_vote_scores(x_train, train_ids, x_test, len(vocab))
    scores["content_knn+user_frequency"] = as_distribution(scores["content_knn"]) \
        + as_distribution(scores["user_frequency"])
    scores["agnostic"] = lookup.scores(x_test, test_users, agnostic=True)
    effects, held = task.main_effects(params.seed)
    scores["mcll"] = effects.content.log_probabilities(x_test)
    scores["habit_x_photo"], combination = habit_x_photo_scores(task, held.out_of_fold,
                                                                scores["mcll"])
    log.info("habit x photo: beta %.3f, gamma %.3f", *combination)
    scores["lift_x_photo"] = lookup.scores(x_test, test_users, tensor=False)
    lift_weights = {"smoothing": effects.smoothing, "beta": round(effects.beta, 3),
                    "gamma": round(effects.gamma, 3)}
    mlp = train_user_mlp(standardize(x_train, x_train), train_ids, rows_train, len(users),
                         len(vocab), seed=seed)
    with torch.no_grad():
        unknown = len(users)
        test_rows = torch.tensor([user_row.get(u, unknown) for u in test_users])
        scores["mlp"] = mlp(torch.from_numpy(standardize(x_test, x_train)), test_rows).numpy()
    scores["tensor"] = lookup.scores(x_test, test_users)
    mixture_tensor, mixture = task.train_mixture_tensor(params, progress, params.seed)
    # The experts on the test posts are rows above: MCLL and the kNN votes over every
    # training post (what mixture_experts would compute again).
    test_experts = (task.user_shares_of(test_users, task.counts), np.exp(scores["mcll"]),
                    as_distribution(scores["content_knn"]))
    scores["mixture"] = mixture.probabilities(test_experts)
    half_life, held_recent, held_cooccurring = task.recent_experts
    scores["recency"], scores["cooccurrence"] = task.recent_experts_of(test_users)
    recent_mixture = mixture.extended(task.held_out_experts(params.seed),
                                      (held_recent, held_cooccurring), task.fit_ids)
    scores["mixture+recency"] = recent_mixture.probabilities(
        (*test_experts, scores["recency"], scores["cooccurrence"]))
    scores["recommender_form"], user_weight = recommender_form_scores(
        task.held_out_experts(params.seed), task.fit_ids,
        (task.user_shares_of(test_users, task.counts), np.exp(scores["mcll"]),
         as_distribution(scores["content_knn"])), vocab.terms)
    scores["served"], served = served_scores(task, lookup, params.seed, (
        np.exp(scores["mcll"]), as_distribution(scores["content_knn"])))
    log_mixture = np.log(scores["mixture"] + MIXTURE_FLOOR)
    scores["mixture+tensor"] = mixture_tensor.scores(x_test, test_users) + log_mixture
    three_way = {params.seed: (scores["mixture+tensor"], mixture_tensor.tensor_active)}
    for extra in tensor_seeds:
        if extra not in three_way:
            other, _ = task.train_mixture_tensor(dataclasses.replace(params, seed=extra),
                                                 progress, params.seed)
            three_way[extra] = (other.scores(x_test, test_users) + log_mixture,
                                other.tensor_active)
    results = {name: accuracies(method_scores, truth) for name, method_scores in scores.items()}
    for name, row in results.items():
        log.info("%s: %s", name, row)
    share = len(x_test) / len(test_posts)  # a post with no vocabulary hashtag is a miss
    results_all = {name: {metric: round(value * share, 2) for metric, value in row.items()}
                   for name, row in results.items()}
    by_photo = results_by_photo(scores, truth, seen_photos(x_train, x_test))
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
                      lift_weights, by_photo, len(test_posts), results_all,
                      dict(zip(MIXTURE_EXPERTS, mixture.weights, strict=True)),
                      three_way_report(results["mixture"], three_way, truth),
                      results_by_user_posts(scores, truth, [
                          post_counts[user_row[u]] if u in user_row else 0
                          for u in test_users]), user_weight.about(), served.about(),
                      {"half_life": half_life, "weights": dict(zip(
                          (*MIXTURE_EXPERTS, "recency", "cooccurrence"),
                          recent_mixture.weights, strict=True))})


def recommender_form_scores(held_out: Sequence[np.ndarray], held_out_ids: Sequence[Sequence[int]],
                            test: Sequence[np.ndarray], terms: Sequence[str],
                            ) -> tuple[np.ndarray, UserWeightFit]:
    """The recommender's form of the combination on real users, from the mixture's experts
    (user shares P_u, content model, content neighbours): the content score is the sum of
    the two content distributions scaled to [0, 1] (as the recommender scales its fused
    photo score), the user term P_u(h) / max P_u over the user's top USER_DEPTH (as the
    user service answers), s(h) = ŝ_content(h) + w · relative_u(h) (condition_on_user),
    with w fitted by fit_user_weight on the held-out training posts."""
    index = {term: row for row, term in enumerate(terms)}

    def parts(experts: Sequence[np.ndarray]) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        user, content, neighbours = experts
        best = top_k(user, USER_DEPTH)
        relative = np.take_along_axis(user, best, axis=1)
        relative = relative / np.maximum(relative[:, :1], 1e-12)
        answers = [[(terms[h], float(r)) for h, r in zip(ids, row, strict=True)]
                   for ids, row in zip(best.tolist(), relative.tolist(), strict=True)]
        return min_max_rows(content + neighbours), answers

    content, answers = parts(held_out)
    fit = fit_user_weight(content, terms, answers,
                          [frozenset(terms[h] for h in ids) for ids in held_out_ids])
    content, answers = parts(test)
    return np.stack([condition_on_user(index, row, answer, fit.weight)[0]
                     for row, answer in zip(content, answers, strict=True)]), fit


def served_scores(task: UserTask, lookup: UserHashtagLookup, seed: int,
                  test_content: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, UserMixFit]:
    """The served combination, computed by the serving code: the served user model's
    answer (``lookup.top_k``, as the user service asks it) mixed with the user's habits
    (``lookup.habits``) by ``mix_user_answers``, added with weight w to the content score
    scaled to [0, 1] (``condition_on_user``; the content is P_mcll + P_knn, the photo
    methods' stand-in for text posts); a stranger's answer is the content's alone, as the
    recommender ignores the user service for an unknown user. The share and w are chosen
    by ``fit_user_mix`` on each user's last training post (``validation_rows``, which no
    fit saw; the early stopping of the tensor read them), scored by a lookup that counts
    the fit posts alone."""
    effects, _ = task.main_effects(seed)
    fit_rows, held_out = task.fit_rows, task.validation_rows
    terms = task.vocab.terms
    index = {term: row for row, term in enumerate(terms)}
    choosing = UserHashtagLookup(lookup.model, terms, task.users,
                                 np.bincount(task.rows_train[fit_rows],
                                             minlength=len(task.users)).astype(float),
                                 task.fit_counts, effects)

    def parts(served: UserHashtagLookup, features: np.ndarray, users: Sequence[str | None],
              content: np.ndarray, neighbours: np.ndarray,
              ) -> tuple[np.ndarray, list[list[tuple[str, float]]], list[list[tuple[str, float]]]]:
        scores, ids = served.top_k(features, users, USER_DEPTH)
        relative = np.exp(scores - scores[:, :1])
        answers = [[(terms[h], float(r)) for h, r in zip(row_ids, row, strict=True)]
                   if served.known(user) else []
                   for row_ids, row, user in zip(ids.tolist(), relative, users, strict=True)]
        return min_max_rows(content + neighbours), answers, served.habits(users, USER_DEPTH)

    held_users = [task.users[task.rows_train[i]] for i in held_out]
    _, held_content, held_neighbours = task.mixture_experts(
        task.x_train[held_out], held_users, task.fit_counts, fit_rows, task.fit_ids, seed)
    content, answers, habits = parts(choosing, task.x_train[held_out], held_users,
                                     held_content, held_neighbours)
    fit = fit_user_mix(content, terms, answers, habits,
                       [frozenset(terms[h] for h in task.train_ids[i]) for i in held_out])
    content, answers, habits = parts(lookup, task.x_test, task.test_users, *test_content)
    return np.stack([condition_on_user(index, row, mix_user_answers(answer, habit, fit.mix),
                                       fit.weight)[0][:len(terms)]
                     for row, answer, habit in zip(content, answers, habits, strict=True)]), fit


def three_way_report(mixture: dict[str, float],
                     runs: dict[int, tuple[np.ndarray, bool]],
                     truth: Sequence[frozenset[int]]) -> dict[str, object]:
    """What the three-way term adds over the mixture, per seed and as mean ± sd; a seed
    whose early stopping kept epoch 0 adds exactly nothing."""
    per_seed = {seed: {**accuracies(scores, truth), "tensor_kept": active}
                for seed, (scores, active) in runs.items()}
    gains = {metric: [row[metric] - mixture[metric] for row in per_seed.values()]
             for metric in ("A@1", "A@10")}
    return {"per_seed": per_seed, "gain_over_mixture": {
        metric: {"mean": round(float(np.mean(g)), 2), "sd": round(float(np.std(g)), 2)}
        for metric, g in gains.items()}}


#: test posts grouped by how many training posts their user has
USER_POST_BUCKETS = ((0, 0), (1, 4), (5, 9), (10, 19), (20, None))


def results_by_user_posts(scores: dict[str, np.ndarray], truth: Sequence[frozenset[int]],
                          user_posts: Sequence[int]) -> dict[str, dict[str, object]]:
    """The table over test posts whose user has few or many training posts: what a
    per-user term can learn grows with them."""
    counts = np.asarray(user_posts)
    parts: dict[str, dict[str, object]] = {}
    for low, high in USER_POST_BUCKETS:
        mask = (counts >= low) & (counts <= (high if high is not None else counts.max()))
        rows = np.flatnonzero(mask)
        name = f"{low}+" if high is None else (f"{low}" if low == high else f"{low}-{high}")
        parts[name] = {"posts": len(rows)}
        if len(rows):
            parts[name]["results"] = {
                method: accuracies(scores[method][rows], [truth[i] for i in rows])
                for method in ("user_frequency", "content_knn+user_frequency", "mixture",
                               "recency", "mixture+recency", "lift_x_photo", "tensor",
                               "mixture+tensor", "served")}
    return parts


def seen_photos(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """For each test post, whether its photo (its exact features) is a training photo."""
    known = {row.tobytes() for row in np.ascontiguousarray(train, dtype=np.float32)}
    return np.array([row.tobytes() in known
                     for row in np.ascontiguousarray(test, dtype=np.float32)], dtype=bool)


def results_by_photo(scores: dict[str, np.ndarray], truth: Sequence[frozenset[int]],
                     seen: np.ndarray) -> dict[str, dict[str, object]]:
    """The table over test posts whose photo was seen in training, and over the rest:
    a method that memorises photos shines on the first only."""
    parts: dict[str, dict[str, object]] = {}
    for name, mask in (("seen", seen), ("unseen", ~seen)):
        rows = np.flatnonzero(mask)
        parts[name] = {"posts": len(rows)}
        if len(rows):
            parts[name]["results"] = {method: accuracies(s[rows], [truth[i] for i in rows])
                                      for method, s in scores.items()}
    log.info("test posts: %d with a photo seen in training, %d with a new photo",
             parts["seen"]["posts"], parts["unseen"]["posts"])
    return parts


#: m of habit_x_photo's user prior P̃_u(h) = (c_uh + m P(h)) / (n_u + m)
PRIOR_STRENGTH = 5.0


def smoothed_log_prior(counts: np.ndarray, global_share: np.ndarray,
                       strength: float = PRIOR_STRENGTH) -> np.ndarray:
    """log P̃(h) = log (c_h + m P(h)) / (n + m) along the last axis of ``counts`` (one user's
    row, or many): Dirichlet smoothing, a stranger's P̃ is P."""
    return np.log(counts + strength * global_share) \
        - np.log(counts.sum(axis=-1, keepdims=True) + strength)


def habit_x_photo_scores(task: UserTask, out_of_fold: np.ndarray, test: np.ndarray,
                         ) -> tuple[np.ndarray, tuple[float, float]]:
    """(β log P̃_u(h) + γ log P(h | x) / P(h) for the test posts, (β, γ)), from the photo
    model's out-of-fold and test log-probabilities; P(h) the add-one global share."""
    total = task.counts.sum(axis=0)
    share = (total + 1.0) / (total.sum() + len(total))
    log_share = np.log(share)
    train_prior = smoothed_log_prior(task.leave_one_out_counts, share)
    beta, gamma = fit_expert_weights(train_prior, out_of_fold - log_share, task.fit_ids)
    test_prior = np.stack([smoothed_log_prior(task.counts[task.user_row[u]], share)
                           if u in task.user_row else log_share for u in task.test_users])
    return beta * test_prior + gamma * (test - log_share), (beta, gamma)


def standardize(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return ((features - reference.mean(axis=0)) / (reference.std(axis=0) + 1e-6)
            ).astype(np.float32)
