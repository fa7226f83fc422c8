"""Veit et al.'s user experiments on the simulated-user benchmark (or real user ids).

- tagging: A@1, A@10 of `global_frequency`, `user_frequency`, `agnostic` (the tensor model
  with the user averaged out), `mlp` (Veit's concatenation of photo feature and user
  embedding into an MLP) and `tensor` (user-conditional, cold-user rule of
  services/user/lookup.py);
- retrieval: hashtag (+ the photo's poster) → test photos, P@10 (Veit eq. 8) averaged over
  the hashtags that tag at least one test photo.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from services.user.lookup import UserHashtagLookup
from services.user.model import TensorParams, Triplets, train_tensor
from shared.data.normalize import Vocabulary
from shared.data.readers import Post
from shared.eval.metrics import accuracy_at_k, top_k

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
    targets = torch.zeros(len(hashtags), n_hashtags)
    for row, ids in enumerate(hashtags):
        targets[row, list(ids)] = 1.0 / len(ids)
    users = torch.from_numpy(user_rows.astype(np.int64))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        network.train()
        for batch in torch.randperm(len(inputs), generator=generator).split(128):
            optimizer.zero_grad()
            log_probabilities = torch.log_softmax(network(inputs[batch], users[batch]), dim=1)
            (-(targets[batch] * log_probabilities).sum(dim=1).mean()).backward()
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


def run_user(train_posts: Sequence[Post], test_posts: Sequence[Post],
             features: dict[str, np.ndarray], params: TensorParams | None = None,
             min_count: int = 3, max_vocab: int = 2000, seed: int = 0,
             progress: bool = True) -> UserResult:
    """``features`` maps each post id to its photo's CNN features."""
    params = params or TensorParams(seed=seed)
    vocab = Vocabulary.build([p.hashtags for p in train_posts], min_count, max_vocab)
    users = sorted({p.user for p in train_posts if p.user is not None})
    user_row = {user: row for row, user in enumerate(users)}

    def encode(posts: Sequence[Post]) -> tuple[list[Post], list[list[int]]]:
        kept = [(p, vocab.encode(p.hashtags)) for p in posts]
        kept = [(p, ids) for p, ids in kept if ids]
        return [p for p, _ in kept], [ids for _, ids in kept]

    train, train_ids = encode(train_posts)
    test, test_ids = encode(test_posts)
    truth = [frozenset(ids) for ids in test_ids]
    x_train = np.stack([features[p.id] for p in train])
    x_test = np.stack([features[p.id] for p in test])
    rows_train = np.array([user_row[p.user] for p in train])
    log.info("user task: %d users, vocabulary %d, %d train / %d test posts", len(users),
             len(vocab), len(train), len(test))

    counts = np.zeros((len(users), len(vocab)))
    for row, ids in zip(rows_train, train_ids, strict=True):
        counts[row, ids] += 1
    post_counts = np.bincount(rows_train, minlength=len(users)).astype(float)

    model = train_tensor(x_train, Triplets.from_posts(train_ids, rows_train), len(vocab),
                         len(users), params, progress)
    lookup = UserHashtagLookup(model, vocab.terms, users, post_counts, counts)
    test_users = [p.user for p in test]

    global_counts = counts.sum(axis=0)
    scores = {"global_frequency": np.tile(global_counts, (len(test), 1))}
    tie_break = global_counts / (global_counts.sum() * 10)  # never outweighs one use
    scores["user_frequency"] = np.stack([
        counts[user_row[u]] + tie_break if u in user_row else global_counts
        for u in test_users])
    scores["agnostic"] = lookup.scores(x_test, test_users, agnostic=True, prior=False)
    mlp = train_user_mlp(standardize(x_train, x_train), train_ids, rows_train, len(users),
                         len(vocab), seed=seed)
    with torch.no_grad():
        unknown = len(users)
        test_rows = torch.tensor([user_row.get(u, unknown) for u in test_users])
        scores["mlp"] = mlp(torch.from_numpy(standardize(x_test, x_train)), test_rows).numpy()
    scores["tensor"] = lookup.scores(x_test, test_users)
    results = {}
    for name, method_scores in scores.items():
        ranked = top_k(method_scores, 10)
        results[name] = {"A@1": round(accuracy_at_k(ranked, truth, 1), 2),
                         "A@10": round(accuracy_at_k(ranked, truth, 10), 2)}
        log.info("%s: %s", name, results[name])
    retrieval = {name: {"P@10": round(retrieval_precision(scores[name], truth), 2)}
                 for name in ("agnostic", "mlp", "tensor")}
    return UserResult(len(users), len(train), len(test), len(vocab), results, retrieval,
                      lookup)


def standardize(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return ((features - reference.mean(axis=0)) / (reference.std(axis=0) + 1e-6)
            ).astype(np.float32)
