"""Veit et al.'s user-conditional hashtag model: a three-way tensor of hashtag, photo, user.

    s(h_i, f_j, u_k) = Σ_{r1 r2 r3} w_{r1 r2 r3} h_{i r1} f_{j r2} u_{k r3}      (eq. 3)
                     = h_iᵀ W^(k) f_j,    W^(k) = Σ_r u_{kr} W_r                  (eq. 4–5)

h_i ∈ R^D is a learned hashtag embedding, f_j = P x_j ∈ R^F the projected CNN feature of the
photo, u_k ∈ R^E a learned user embedding. Ranking every hashtag for a photo and a user is
a maximum-inner-product search for q = W^(k) f_j over the h_i.

Training minimises the ranking loss ℓ(t⁺) = Σ_{t⁻} max(0, 1 − s(t⁺) + s(t⁻)) (§3.2) with six
negatives per positive triplet (h, f, u), mined within the batch along all three axes: for
each axis one "intermediate" negative (that element replaced by a uniformly drawn other
element of the batch) and one "hard" negative (replaced by the batch element that scores
highest), never by an element that makes an observed triplet.

Main effects. With ``offsets`` (effects.py) the score carries what the user and the photo
say each on their own, as fixed offsets, and the tensor learns what they say together:

    s_u(h | x) = h_iᵀ W^(u) f + β log lift_u(h) + γ log P(h | x)

In training each post's offsets are held out from it (its user's lift without the post,
its photo term out of fold), so they never "know" the post they score. Without them the
tensor memorises (photo, user) → hashtags: on the simulated-user benchmark it fitted
99.6 % of its training posts at A@1 and 11.5 % of the test posts (bench/user_diagnostics.py,
removed with the user-frequency offset it studied: `git show d4d72f7:bench/user_diagnostics.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from services.user.tensor import ARRAYS, TensorParams, TensorWeights

log = logging.getLogger(__name__)


@dataclass
class Offsets:
    """The main effects of the training posts as torch tensors (effects.HeldOutEffects)."""

    habit: torch.Tensor  # posts × V: β log lift of the post's user, the post left out
    content: torch.Tensor | None  # posts × V: γ log P(h | x), x the content, out of fold
    user_habit: torch.Tensor | None  # users × V: β log lift of each user, all their posts

    @classmethod
    def one_term(cls, log_probabilities: np.ndarray) -> Offsets:
        """Main effects that are one held-out log-probability per post and hashtag (a
        mixture of experts, effects.Mixture); the softmax loss reads them."""
        return cls(torch.from_numpy(np.asarray(log_probabilities, dtype=np.float32)),
                   None, None)

    @classmethod
    def from_arrays(cls, habit: np.ndarray, content: np.ndarray, user_habit: np.ndarray,
                    ) -> Offsets:
        return cls(*(torch.from_numpy(np.asarray(a, dtype=np.float32))
                     for a in (habit, content, user_habit)))


class TensorModel(torch.nn.Module):
    def __init__(self, n_hashtags: int, n_users: int, input_dim: int,
                 params: TensorParams = TensorParams(), zero_core: bool = False) -> None:
        super().__init__()
        self.params = params
        self.hashtags = torch.nn.Embedding(n_hashtags, params.hashtag_dim)
        self.users = torch.nn.Embedding(n_users, params.user_dim)
        self.project = torch.nn.Linear(input_dim, params.photo_dim)
        # W_r, r = 1..E: one D × F bilinear map per user-embedding coordinate.
        self.core = torch.nn.Parameter(torch.empty(params.user_dim, params.hashtag_dim,
                                                   params.photo_dim))
        torch.nn.init.normal_(self.hashtags.weight, std=params.hashtag_dim ** -0.5)
        torch.nn.init.normal_(self.users.weight, mean=1.0 / params.user_dim,
                              std=0.1 / params.user_dim)
        if zero_core:
            # Over main effects the score starts as those alone; the tensor may only add.
            torch.nn.init.zeros_(self.core)
        else:
            torch.nn.init.normal_(self.core, std=(params.hashtag_dim * params.photo_dim)
                                  ** -0.5 * params.user_dim ** 0.5)

    def photo(self, features: torch.Tensor) -> torch.Tensor:
        """f = P x."""
        return self.project(features)

    def query(self, photos: torch.Tensor, user_vectors: torch.Tensor) -> torch.Tensor:
        """q = W^(u) f = Σ_r u_r (W_r f), one row per (photo, user) pair."""
        return torch.einsum("be,edf,bf->bd", user_vectors, self.core, photos)

    def mean_user(self) -> torch.Tensor:
        """ū: the user embedding of the user-agnostic model (the user averaged out)."""
        return self.users.weight.mean(dim=0)

    @torch.no_grad()
    def weights(self) -> TensorWeights:
        """The trained parameters as the arrays serving reads (copies)."""
        state = self.state_dict()
        return TensorWeights(self.params, {name: state[name].numpy().copy() for name in ARRAYS},
                             self.mean_user().numpy().copy())


def _masked_max(scores: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(forbidden, float("-inf")).max(dim=1).values


def _masked_random(scores: torch.Tensor, forbidden: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(scores.shape, generator=generator).masked_fill(forbidden, -1.0)
    return scores.gather(1, noise.argmax(dim=1, keepdim=True)).squeeze(1)


def ranking_loss(model: TensorModel, hashtag_ids: torch.Tensor, photos: torch.Tensor,
                 user_ids: torch.Tensor, post_ids: torch.Tensor, positive: torch.Tensor,
                 generator: torch.Generator, margin: float = 1.0,
                 offsets: Offsets | None = None) -> torch.Tensor:
    """Mean hinge loss of a batch of positive triplets against their six in-batch negatives.

    ``positive[b, b']`` is True when hashtag b' is observed on post b (so (h_b', f_b, u_b) is
    no negative); posts are identified by ``post_ids`` (so photo b' of the same post, or of a
    post with hashtag b, is no negative for b either); ``post_ids`` also index the rows of
    ``offsets``, whose main effects every score carries: the user's lift of the hashtag
    (for the positive's own user without its post) and the photo's log-probability of it.
    """
    h = model.hashtags(hashtag_ids)  # B × D
    u = model.users(user_ids)  # B × E
    f = model.photo(photos)  # B × F
    w_f = torch.einsum("edf,bf->bed", model.core, f)  # W_r f for every r: B × E × D
    q = torch.einsum("be,bed->bd", u, w_f)  # W^(u_b) f_b
    score = (h * q).sum(dim=1)
    # Hashtag axis: s(h_b', f_b, u_b) = q_b · h_b'.
    hashtag_scores = q @ h.T
    hashtag_forbidden = positive | (hashtag_ids[None, :] == hashtag_ids[:, None])
    # Photo axis: s(h_b, f_b', u_b) = (h_bᵀ W^(u_b)) f_b'.
    left = torch.einsum("bd,be,edf->bf", h, u, model.core)
    photo_scores = left @ f.T
    photo_forbidden = (post_ids[None, :] == post_ids[:, None]) | positive.T
    # User axis: s(h_b, f_b, u_b') = Σ_r u_b'r (h_bᵀ W_r f_b).
    per_user_axis = torch.einsum("bd,bed->be", h, w_f)
    user_scores = per_user_axis @ u.T
    user_forbidden = user_ids[None, :] == user_ids[:, None]
    if offsets is not None:
        if offsets.content is None or offsets.user_habit is None:
            raise ValueError("the ranking loss needs the habit, photo and user offsets")
        habit = offsets.habit[post_ids]  # B × V: this post's user, the post left out
        photo = offsets.content[post_ids]  # B × V
        own_habit = habit.gather(1, hashtag_ids[:, None]).squeeze(1)
        own_photo = photo.gather(1, hashtag_ids[:, None]).squeeze(1)
        score = score + own_habit + own_photo
        hashtag_scores = hashtag_scores + habit[:, hashtag_ids] + photo[:, hashtag_ids]
        # Photo axis: the user and hashtag stay, the photo is post b''s.
        photo_scores = photo_scores + own_habit[:, None] + photo[:, hashtag_ids].T
        # User axis: user b''s lift of hashtag b (every post of theirs), photo b's.
        user_scores = user_scores + offsets.user_habit[user_ids[None, :],
                                                       hashtag_ids[:, None]] \
            + own_photo[:, None]
    negatives = []
    for scores, forbidden in ((hashtag_scores, hashtag_forbidden),
                              (photo_scores, photo_forbidden),
                              (user_scores, user_forbidden)):
        usable = ~forbidden.all(dim=1)  # a batch of one user has no user negative
        hard = _masked_max(scores, forbidden)
        intermediate = _masked_random(scores, forbidden, generator)
        negatives += [torch.where(usable, hard, score - margin),
                      torch.where(usable, intermediate, score - margin)]
    negative_scores = torch.stack(negatives, dim=1)  # B × 6
    return torch.relu(margin - score[:, None] + negative_scores).sum(dim=1).mean()


def softmax_loss(model: TensorModel, photos: torch.Tensor, user_ids: torch.Tensor,
                 post_ids: torch.Tensor, post_tags: torch.Tensor,
                 offsets: Offsets | None = None) -> torch.Tensor:
    """−mean log softmax_h(s(h, f, u)) over each post's hashtags, every hashtag of the
    vocabulary competing; ``post_tags[b]`` marks post b's hashtags; ``post_ids`` index the
    rows of ``offsets``, the main effects added to every logit."""
    q = model.query(model.photo(photos), model.users(user_ids))  # B × D
    logits = q @ model.hashtags.weight.T  # B × V
    if offsets is not None:
        logits = logits + offsets.habit[post_ids]
        if offsets.content is not None:
            logits = logits + offsets.content[post_ids]
    log_probabilities = torch.log_softmax(logits, dim=1)
    per_post = (log_probabilities * post_tags).sum(dim=1) / post_tags.sum(dim=1)
    return -per_post.mean()


@dataclass
class Triplets:
    """Observed (hashtag, photo, user) triplets: one row per hashtag of each post."""

    hashtag_ids: np.ndarray
    photo_rows: np.ndarray
    user_ids: np.ndarray
    post_hashtags: list[frozenset[int]]

    @classmethod
    def from_posts(cls, hashtags: Sequence[Sequence[int]], user_ids: Sequence[int]) -> Triplets:
        rows = [(h, post, user) for post, (ids, user) in
                enumerate(zip(hashtags, user_ids, strict=True)) for h in ids]
        if not rows:
            raise ValueError("no (hashtag, photo, user) triplet to train on")
        h, p, u = (np.array(column, dtype=np.int64) for column in zip(*rows, strict=True))
        return cls(h, p, u, [frozenset(ids) for ids in hashtags])


def train_tensor(features: np.ndarray, triplets: Triplets, n_hashtags: int, n_users: int,
                 params: TensorParams = TensorParams(), progress: bool = True,
                 validate: Callable[[TensorModel], float] | None = None,
                 offsets: Offsets | None = None) -> TensorModel:
    """Trains for ``params.epochs``, over the main effects ``offsets`` of the posts when
    given (the core then starts at zero); with ``validate`` (higher is better, called after each
    epoch) the best epoch's weights are kept: early stopping on held-out posts."""
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = TensorModel(n_hashtags, n_users, features.shape[1], params,
                        zero_core=offsets is not None)
    # Standardised features: the projection then starts on a sensible scale.
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    model.register_buffer("feature_mean", torch.from_numpy(mean.astype(np.float32)))
    model.register_buffer("feature_scale", torch.from_numpy(scale.astype(np.float32)))
    inputs = torch.from_numpy(((features - mean) / scale).astype(np.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate,
                                  weight_decay=params.weight_decay)
    n = len(triplets.hashtag_ids)
    post_tags = torch.zeros(len(triplets.post_hashtags), n_hashtags, dtype=torch.bool)
    for post, ids in enumerate(triplets.post_hashtags):
        post_tags[post, list(ids)] = True
    hashtag_ids = torch.from_numpy(triplets.hashtag_ids)
    photo_rows = torch.from_numpy(triplets.photo_rows)
    user_ids = torch.from_numpy(triplets.user_ids)
    post_users = torch.zeros(len(triplets.post_hashtags), dtype=torch.long)
    post_users[photo_rows] = user_ids
    best_score, best_state, best_epoch = float("-inf"), None, 0

    def keep_if_best(epoch: int) -> None:
        nonlocal best_score, best_state, best_epoch
        model.eval()
        with torch.no_grad():
            score = validate(model)
        model.train()
        log.info("tensor model: epoch %d, validation %.3f", epoch, score)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    if validate is not None:
        keep_if_best(0)
    if params.loss not in ("ranking", "softmax"):
        raise ValueError(f"loss must be 'ranking' or 'softmax', got {params.loss!r}")
    # The ranking loss steps through triplets, the softmax through posts.
    n = n if params.loss == "ranking" else len(triplets.post_hashtags)
    bar = tqdm(total=params.epochs * ((n + params.batch_size - 1) // params.batch_size),
               desc="tensor model", unit="batch", disable=not progress)
    for epoch in range(params.epochs):
        total = 0.0
        for batch in torch.randperm(n, generator=generator).split(params.batch_size):
            optimizer.zero_grad()
            if params.loss == "ranking":
                rows, tags = photo_rows[batch], hashtag_ids[batch]
                loss = ranking_loss(model, tags, inputs[rows], user_ids[batch], rows,
                                    post_tags[rows][:, tags], generator, params.margin,
                                    offsets)
            else:
                loss = softmax_loss(model, inputs[batch], post_users[batch], batch,
                                    post_tags[batch], offsets)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            bar.update()
        bar.set_postfix(loss=f"{total / n:.3f}")
        log.info("tensor model: epoch %d, %s loss %.4f", epoch + 1, params.loss, total / n)
        if validate is not None:
            keep_if_best(epoch + 1)
            if epoch + 1 - best_epoch >= params.patience:
                log.info("tensor model: no better epoch than %d in %d, stopping", best_epoch,
                         params.patience)
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
        log.info("tensor model: kept epoch %d (validation %.3f)", best_epoch, best_score)
    return model.eval()


def standardized(model: TensorModel, features: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(features.astype(np.float32)) - model.feature_mean) \
        / model.feature_scale
