"""Why the tensor model trails user frequency on the simulated-user benchmark.

    python bench/user_diagnostics.py [--users 300] [--dims 64,64,32] [--epochs 15]
        [--prior-weight 1] [--weight-decay 0] [--blank-photos] [--trace]

Trains the tensor model once (early stopping on each user's last training post) and
prints, in A@1 / A@10:
- user frequency, the bar to beat;
- the tensor on the test posts and on (every 7th of) its own training posts: a large gap
  means it memorises (photo, user) → hashtags instead of learning habits;
- its tensor term alone (without β log P̃_u) and the tensor scored with the mean photo:
  how much of the ranking comes from the photo;
- the headroom: the user prior plus γ times the log of a visual kNN's hashtag votes (20
  nearest training photos), γ swept *on the test posts* — an optimistic ceiling of what
  photo evidence can add on this benchmark, not a method.
With --blank-photos every photo is the mean photo in training and test alike, which
leaves the same model and loss nothing but user → hashtag habits. With --trace it first
trains once more without early stopping and prints the test A@1 / A@10 of the tensor and
of its agnostic version after every epoch: whether any epoch at all beats the prior.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from services.user.lookup import UserHashtagLookup
from services.user.model import TensorModel, TensorParams, Triplets, train_tensor
from services.vision.store import FeatureStore
from shared.config import data_root, models_dir, setup_logging
from shared.data.simulated_users import SIGNATURE_PROBABILITY, simulate, source_posts
from shared.eval.user import (
    UserTask,
    accuracies,
    prepare_user_task,
    split_with_features,
    user_frequency_scores,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dims", default="64,64,32", metavar="D,F,E")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--prior-weight", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--blank-photos", action="store_true")
    parser.add_argument("--signature-probability", type=float, default=SIGNATURE_PROBABILITY)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    setup_logging(os.environ.get("HASHREC_LOG_LEVEL", "WARNING"))
    started = time.perf_counter()

    posts = simulate(source_posts(data_root()), n_users=args.users, seed=args.seed,
                     signature_probability=args.signature_probability)
    train, test, features = split_with_features(posts, FeatureStore(models_dir() / "features"))
    task = prepare_user_task(train, test, features)
    if args.blank_photos:
        task = dataclasses.replace(task, x_train=np.zeros_like(task.x_train),
                                   x_test=np.zeros_like(task.x_test))
    hashtag_dim, photo_dim, user_dim = (int(v) for v in args.dims.split(","))
    params = TensorParams(
        hashtag_dim, photo_dim, user_dim, epochs=args.epochs, prior_weight=args.prior_weight,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, seed=args.seed)
    if args.trace:
        trace(task, params)
    lookup = task.train_lookup(params, progress=False)

    tensor = lookup.scores(task.x_test, task.test_users)
    sample = np.arange(0, len(task.x_train), 7)
    own = [frozenset(task.train_ids[i]) for i in sample]
    own_users = [task.users[task.rows_train[i]] for i in sample]
    mean_photo = np.tile(task.x_train.mean(axis=0), (len(task.x_test), 1))
    print(f"{len(task.users)} users, {len(task.x_train)} train / {len(task.x_test)} test "
          f"posts, vocabulary {len(task.vocab)}; {vars(args)}")
    rows = {
        "user_frequency": accuracies(user_frequency_scores(task), task.truth),
        "tensor (test)": accuracies(tensor, task.truth),
        "tensor (own training posts)": accuracies(
            lookup.scores(task.x_train[sample], own_users), own),
        "tensor term alone": accuracies(
            lookup.scores(task.x_test, task.test_users, prior=False), task.truth),
        "tensor, mean photo": accuracies(
            lookup.scores(mean_photo, task.test_users), task.truth),
    }
    for gamma, row in knn_headroom(task, lookup).items():
        rows[f"prior + {gamma:g} log kNN"] = row
    for name, row in rows.items():
        print(f"{name:<30}A@1 {row['A@1']:>6.2f}   A@10 {row['A@10']:>6.2f}")
    print(f"{time.perf_counter() - started:.0f} s")


def trace(task: UserTask, params: TensorParams) -> None:
    """Test A@1 / A@10 after each epoch (epoch 0: the user prior alone), nothing kept."""
    post_counts = np.bincount(task.rows_train, minlength=len(task.users)).astype(float)

    def report(model: TensorModel) -> float:
        lookup = UserHashtagLookup(model, task.vocab.terms, task.users, post_counts,
                                   task.counts)
        tensor = accuracies(lookup.scores(task.x_test, task.test_users), task.truth)
        agnostic = accuracies(lookup.scores(task.x_test, task.test_users, agnostic=True),
                              task.truth)
        print(f"epoch {len(seen):>3}  tensor A@1 {tensor['A@1']:>6.2f} A@10 "
              f"{tensor['A@10']:>6.2f}   agnostic A@1 {agnostic['A@1']:>6.2f} A@10 "
              f"{agnostic['A@10']:>6.2f}", flush=True)
        seen.append(tensor)
        return 0.0

    seen: list[dict[str, float]] = []
    train_tensor(task.x_train, Triplets.from_posts(task.train_ids, task.rows_train),
                 len(task.vocab), len(task.users), params, False, report)


def knn_headroom(task: UserTask, lookup: UserHashtagLookup) -> dict[float, dict[str, float]]:
    """User prior + γ log P_kNN(h | photo) / P(h) for a few γ, scored on the test posts."""
    from shared.index import l2_normalized

    train, test = l2_normalized(task.x_train), l2_normalized(task.x_test)
    similarity = test @ train.T
    neighbours = np.argsort(-similarity, axis=1)[:, :20]
    tagged = np.zeros((len(train), len(task.vocab)))
    for row, ids in enumerate(task.train_ids):
        tagged[row, ids] = 1.0
    share = np.exp(lookup.log_prior.astype(np.float64))
    votes = np.stack([similarity[r, neighbours[r], None].T @ tagged[neighbours[r]]
                      for r in range(len(test))])[:, 0]
    smoothed = votes + 0.1 * share * votes.sum(axis=1, keepdims=True).clip(1e-9)
    evidence = np.log(smoothed / smoothed.sum(axis=1, keepdims=True)) - np.log(share)
    prior = np.stack([lookup.log_user_prior(u) for u in task.test_users])
    return {gamma: accuracies(prior + gamma * evidence, task.truth)
            for gamma in (0.0, 0.1, 0.25, 0.5)}


if __name__ == "__main__":
    main()
