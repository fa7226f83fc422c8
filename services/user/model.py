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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorParams:
    hashtag_dim: int = 300  # D
    photo_dim: int = 300  # F
    user_dim: int = 50  # E
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    #: first epochs with every photo blanked (the mean photo): the user → hashtag habits
    #: are learned before photo content can be memorised in their place; afterwards only
    #: the photo projection P trains, from zero
    habit_epochs: int = 0
    #: learning rate of the photo projection after the habit epochs, relative
    photo_lr_scale: float = 0.1
    margin: float = 1.0
    seed: int = 0


class TensorModel(torch.nn.Module):
    def __init__(self, n_hashtags: int, n_users: int, input_dim: int,
                 params: TensorParams = TensorParams()) -> None:
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
        torch.nn.init.normal_(self.core, std=(params.hashtag_dim * params.photo_dim) ** -0.5
                              * params.user_dim ** 0.5)

    def photo(self, features: torch.Tensor) -> torch.Tensor:
        """f = P x."""
        return self.project(features)

    def query(self, photos: torch.Tensor, user_vectors: torch.Tensor) -> torch.Tensor:
        """q = W^(u) f = Σ_r u_r (W_r f), one row per (photo, user) pair."""
        return torch.einsum("be,edf,bf->bd", user_vectors, self.core, photos)

    def mean_user(self) -> torch.Tensor:
        """ū: the user embedding of the user-agnostic model (the user averaged out)."""
        return self.users.weight.mean(dim=0)


def _masked_max(scores: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(forbidden, float("-inf")).max(dim=1).values


def _masked_random(scores: torch.Tensor, forbidden: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(scores.shape, generator=generator).masked_fill(forbidden, -1.0)
    return scores.gather(1, noise.argmax(dim=1, keepdim=True)).squeeze(1)


def ranking_loss(model: TensorModel, hashtag_ids: torch.Tensor, photos: torch.Tensor,
                 user_ids: torch.Tensor, post_ids: torch.Tensor, positive: torch.Tensor,
                 generator: torch.Generator, margin: float = 1.0) -> torch.Tensor:
    """Mean hinge loss of a batch of positive triplets against their six in-batch negatives.

    ``positive[b, b']`` is True when hashtag b' is observed on post b (so (h_b', f_b, u_b) is
    no negative); posts are identified by ``post_ids`` (so photo b' of the same post, or of a
    post with hashtag b, is no negative for b either).
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
                 params: TensorParams = TensorParams(), progress: bool = True) -> TensorModel:
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = TensorModel(n_hashtags, n_users, features.shape[1], params)
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
    bar = tqdm(total=params.epochs * ((n + params.batch_size - 1) // params.batch_size),
               desc="tensor model", unit="batch", disable=not progress)
    for epoch in range(params.epochs):
        if params.habit_epochs and epoch == params.habit_epochs:
            # The habits are learned; photo content may now only add to them: P starts
            # at zero (f = b, the mean photo, exactly as so far) and alone is trained.
            with torch.no_grad():
                model.project.weight.zero_()
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            model.project.weight.requires_grad_(True)
            optimizer = torch.optim.AdamW([model.project.weight],
                                          lr=params.learning_rate * params.photo_lr_scale,
                                          weight_decay=params.weight_decay)
        total = 0.0
        for batch in torch.randperm(n, generator=generator).split(params.batch_size):
            rows = photo_rows[batch]
            tags = hashtag_ids[batch]
            positive = post_tags[rows][:, tags]
            optimizer.zero_grad()
            photos = inputs[rows]
            if epoch < params.habit_epochs:
                photos = torch.zeros_like(photos)
            loss = ranking_loss(model, tags, photos, user_ids[batch], rows, positive,
                                generator, params.margin)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            bar.update()
        bar.set_postfix(loss=f"{total / n:.3f}")
        log.info("tensor model: epoch %d, ranking loss %.4f", epoch + 1, total / n)
    bar.close()
    return model.eval()


def standardized(model: TensorModel, features: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(features.astype(np.float32)) - model.feature_mean) \
        / model.feature_scale
