"""Training the served user model: the tensor model on every post of the simulated-user
benchmark (its photos are the shipped photo sets), with those photos made retrievable.

    python -m services.user.train [--users 300] [--dims 64,64,32] [--out DIR]

(or `hashrec train --user-model`). Writes a versioned, checksummed directory
(shared/artifacts.py) that services/user/server.py verifies and loads.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from services.user.lookup import KIND, UserHashtagLookup
from services.user.model import TensorParams
from services.user.task import post_features, prepare_user_task
from services.vision.store import FeatureStore
from shared.artifacts import newest_artifact
from shared.config import data_root, models_dir, setup_logging
from shared.data.readers import Post
from shared.data.simulated_users import drop_spammers, simulate, source_posts

log = logging.getLogger(__name__)
SERVING_PARAMS = TensorParams(hashtag_dim=64, photo_dim=64, user_dim=32, epochs=15)


def train_user_model(out: Path, store: FeatureStore, n_users: int = 300, seed: int = 0,
                     params: TensorParams = SERVING_PARAMS, progress: bool = True,
                     sources: Sequence[Post] | None = None,
                     ) -> tuple[UserHashtagLookup, Path]:
    """Trains on every post of ``n_users`` simulated users posting ``sources`` (default:
    every shipped photo set); returns the lookup and the directory it was written to
    (``out/<version>``)."""
    started = time.perf_counter()
    sources = source_posts(data_root()) if sources is None else sources
    posts = drop_spammers(simulate(sources, n_users=n_users, seed=seed))
    features = post_features(posts, store)
    posts = [p for p in posts if p.id in features]
    task = prepare_user_task(posts, [], features)
    lookup = task.train_lookup(params, progress)
    photos = sorted({p.image for p in posts})
    by_image = {p.image: features[p.id] for p in posts}
    root = data_root()
    lookup.add_photos([str(image.relative_to(root)) if image.is_relative_to(root)
                       else str(image) for image in photos],
                      [by_image[image] for image in photos])
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha256(
        "\n".join(task.vocab.terms).encode() + task.x_train.tobytes()).hexdigest()[:8]
    directory = lookup.save(out / version).parent
    log.info("user model: %d users, %d hashtags, %d photos in %.0f s -> %s",
             len(task.users), len(task.vocab), len(photos), time.perf_counter() - started,
             directory)
    return lookup, directory


def newest_user_model(root: Path) -> Path | None:
    return newest_artifact(root, KIND)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: $HASHREC_MODELS/user")
    args = parser.parse_args()
    setup_logging()
    train_user_model(args.out or models_dir() / "user",
                     FeatureStore(models_dir() / "features"), args.users, args.seed)


if __name__ == "__main__":
    main()
