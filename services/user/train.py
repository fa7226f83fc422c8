"""Training the served user model: the tensor model on every post of the simulated-user
benchmark (its photos are the shipped photo sets), with those photos made retrievable.

    python -m services.user.train [--users 300] [--out DIR] [--image-model DIR]

(`hashrec serve` runs it when no user model exists). Writes a versioned, checksummed
directory (shared/artifacts.py) that services/user/server.py verifies and loads.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from services.image_models import KIND as IMAGE_KIND
from services.image_models import load_image_models, out_of_fold_scores, served_methods
from services.recommender.user_side import USER_DEPTH, fit_user_mix
from services.user.communities import UserCommunities
from services.user.lookup import KIND, UserHashtagLookup
from services.user.model import TensorParams
from services.user.task import post_features, prepare_user_task
from services.vision.store import FeatureStore
from shared.artifacts import newest_artifact, resolve_artifact
from shared.backbone import N_CLASSES
from shared.config import data_root, models_dir, setup_logging
from shared.data.readers import Post
from shared.data.simulated_users import (
    drop_spammers,
    simulate,
    source_posts,
    split_by_user_time,
)
from shared.photos import PhotoSet, photo_key

log = logging.getLogger(__name__)
SERVING_PARAMS = TensorParams(hashtag_dim=64, photo_dim=64, user_dim=32, epochs=15)


def train_user_model(out: Path, store: FeatureStore, n_users: int = 300, seed: int = 0,
                     params: TensorParams = SERVING_PARAMS, progress: bool = True,
                     sources: Sequence[Post] | None = None, image_model: Path | None = None,
                     ) -> tuple[UserHashtagLookup, Path]:
    """Trains on every post of ``n_users`` simulated users posting ``sources`` (default:
    every shipped photo set); returns the lookup and the directory it was written to
    (``out/<version>``). With ``image_model`` (a `hashrec train` directory) it also fits
    the weight the recommender gives this model against that one's photo scores
    (``fit_recommender_weight``) and keeps it in the manifest."""
    started = time.perf_counter()
    sources = source_posts(data_root()) if sources is None else sources
    posts = drop_spammers(simulate(sources, n_users=n_users, seed=seed))
    features = post_features(posts, store)
    posts = [p for p in posts if p.id in features]
    task = prepare_user_task(posts, [], features)
    with _beside(fit_recommender_weight if image_model is not None else None,
                 posts, features, image_model, params, False) as weight_fit:
        lookup = task.train_lookup(params, progress)
    lookup.recommender_fit = weight_fit()
    if image_model is not None:
        lookup.communities.restore(where_users_post(posts, features, image_model))
    photos = sorted({p.image for p in posts})
    by_image = {p.image: features[p.id] for p in posts}
    lookup.add_photos([photo_key(image) for image in photos],
                      [by_image[image] for image in photos])
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha256(
        "\n".join(task.vocab.terms).encode() + task.x_train.tobytes()).hexdigest()[:8]
    directory = lookup.save(out / version).parent
    log.info("user model: %d users, %d hashtags, %d photos in %.0f s -> %s",
             len(task.users), len(task.vocab), len(photos), time.perf_counter() - started,
             directory)
    return lookup, directory


def where_users_post(posts: Sequence[Post], features: dict[str, np.ndarray],
                     image_model: Path) -> dict[str, dict[str, float]]:
    """Each user's posts by community of ``image_model``, each post split by the gate's
    guess for its photo; empty for a model of one community."""
    models = load_image_models(image_model, served_methods(image_model, ("frequency",
                                                                         "knn", "mlp"))[:1])
    if len(models.communities) < 2 or not posts:
        return {}
    shares = models.communities_of(PhotoSet(
        np.stack([features[p.id] for p in posts]),
        np.zeros((len(posts), N_CLASSES), np.float32)))
    if shares is None:  # the model keeps none of the recommender's local methods
        return {}
    counts = UserCommunities()
    for post, row in zip(posts, shares, strict=True):
        counts.add(post.user, dict(zip(models.communities, row.tolist(), strict=True)))
    return counts.state()


@contextmanager
def _beside(function: Callable[..., Any] | None, *args: Any) -> Iterator[Callable[[], Any]]:
    """Runs ``function(*args)`` in a process of its own while the block runs (in this one
    when a single core is usable); yields what returns its result (None without a
    function). The two fits share the cores, each with its share of threads."""
    from shared.batching import limit_numeric_threads, usable_cores

    if function is None:
        yield lambda: None
        return
    cores = usable_cores()
    if cores < 2:
        result = function(*args)
        yield lambda: result
        return
    from concurrent.futures import ProcessPoolExecutor

    share = max(1, cores // 2)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=limit_numeric_threads,
                             initargs=(cores - share,)) as pool:
        pending = pool.submit(function, *args)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(share)
        try:
            yield pending.result  # the caller's call raises what the process raised
        finally:
            torch.set_num_threads(threads)


def fit_recommender_weight(posts: Sequence[Post], features: dict[str, np.ndarray],
                           image_model: Path, params: TensorParams = SERVING_PARAMS,
                           progress: bool = True) -> dict | None:
    """The user side's mix of the user model and the user's habits, and the recommender's
    weight for that side (fit_user_mix), fitted on posts no model saw: each user's last
    10 % (whose photos the simulation draws from a held-out pool no training post shows),
    the user side by a user model trained on the first 90 % alone (its habits those
    posts' counts), the photo side by ``image_model``'s out-of-fold scores. None when the
    image model kept no out-of-fold scores or no held-out post has them."""
    held = out_of_fold_scores(image_model)
    if held is None:
        log.warning("%s keeps no out-of-fold photo scores (trained before they were "
                    "kept): the recommender's default user weight applies", image_model)
        return None
    vocabulary, keys, scaled = held
    row_of: dict[str, int] = {}
    for row, key in enumerate(keys):
        row_of.setdefault(key, row)
    train, held_out = split_by_user_time(posts)
    lookup = prepare_user_task(train, [], features).train_lookup(params, progress)
    held_out = [p for p in held_out if p.image is not None and lookup.known(p.user)
                and photo_key(p.image) in row_of]
    if not held_out:
        log.warning("no held-out post of a known user has an out-of-fold photo score: "
                    "the recommender's default user weight applies")
        return None
    scores, ids = lookup.top_k(np.stack([features[p.id] for p in held_out]),
                               [p.user for p in held_out], USER_DEPTH)
    relative = np.exp(scores - scores[:, :1])
    answers = [[(lookup.vocabulary[i], float(r)) for i, r in zip(row_ids, row, strict=True)]
               for row_ids, row in zip(ids.tolist(), relative, strict=True)]
    # half the users (by a hash of their id) choose the share and weight, the others
    # measure them
    report = [zlib.crc32(p.user.encode()) % 2 == 1 for p in held_out]
    fit = fit_user_mix(scaled[[row_of[photo_key(p.image)] for p in held_out]], vocabulary,
                       answers, lookup.habits([p.user for p in held_out], USER_DEPTH),
                       [frozenset(p.hashtags) for p in held_out],
                       report=report if 0 < sum(report) < len(report) else None)
    return {**fit.about(), "image_model": image_model.name,
            "held_out": "each simulated user's last 10 % of posts, photos from the "
                        "held-out pool, scored out of fold by the image model; the share "
                        "and weight chosen on half the users' posts, reported on the other "
                        "half's"}


def newest_user_model(root: Path) -> Path | None:
    """The newest user model under ``root`` that verifies."""
    return newest_artifact(root, KIND, verified=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: $HASHREC_MODELS/user")
    parser.add_argument("--image-model", type=Path, default=None,
                        help="the `hashrec train` directory (or folder of them: the newest) "
                             "whose photo scores the recommender's user weight is fitted "
                             "against (default: the newest under $HASHREC_MODELS; none: the "
                             "weight is not fitted)")
    args = parser.parse_args()
    setup_logging()
    image_model = (resolve_artifact(args.image_model, IMAGE_KIND) if args.image_model
                   else newest_artifact(models_dir(), IMAGE_KIND))
    train_user_model(args.out or models_dir() / "user",
                     FeatureStore(models_dir() / "features"), args.users, args.seed,
                     image_model=image_model)


if __name__ == "__main__":
    main()
