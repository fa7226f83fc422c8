"""The user service's top-k (services/user/lookup.py: UserHashtagLookup.top_k) on a trained
user model, by how deep the first FAISS search of a batch goes (FIRST_DEPTH times k).

    python bench/user_top_k.py [--user-model DIR] [--depths 1,2,3,4] [--rounds 3]

Batches of 4 photos (real features from the feature store) and 4 of the model's users, k =
USER_DEPTH as the recommender asks: milliseconds a batch and FAISS searches per batch,
each depth in turn, --rounds times; the answers must be the same at every depth (the
threshold check makes them exact).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

import services.user.lookup as user_lookup
from services.recommender.user_side import USER_DEPTH
from services.user.lookup import UserHashtagLookup
from services.user.train import newest_user_model
from shared.config import models_dir


def main(args: argparse.Namespace) -> None:
    directory = args.user_model or newest_user_model(models_dir() / "user")
    lookup = UserHashtagLookup.load(directory)
    users = json.loads((directory / "manifest.json").read_text())["users"]
    files = sorted((models_dir() / "features").rglob("*.npz"))[:4 * args.batches]
    photos = np.stack([np.load(path)["features"] for path in files]).astype(np.float32)
    searches = 0
    search = lookup.index.search

    def counted(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nonlocal searches
        searches += 1
        return search(queries, k)

    lookup.index.search = counted
    print(f"{directory.name}: {len(lookup.vocabulary)} hashtags, vectors "
          f"{lookup.index.vectors.shape[1]}-d, k {USER_DEPTH}, {len(files) // 4} batches of 4")
    answers: set[str] = set()
    for round_ in range(args.rounds + 1):  # the first round warms the caches, unreported
        for depth in args.depths:
            user_lookup.FIRST_DEPTH, searches = depth, 0
            ids, started = [], time.perf_counter()
            for batch in range(len(files) // 4):
                ids.append(lookup.top_k(photos[4 * batch:4 * batch + 4],
                                        [users[(4 * batch + i) % len(users)] for i in range(4)],
                                        USER_DEPTH)[1])
            elapsed = (time.perf_counter() - started) / (len(files) // 4)
            answers.add(hashlib.sha256(np.concatenate(ids).tobytes()).hexdigest())
            if round_:
                print(f"round {round_}, first depth {depth} x k: {1000 * elapsed:.2f} ms a "
                      f"batch, {searches / (len(files) // 4):.2f} searches a batch")
    print("the same answers at every depth" if len(answers) == 1 else
          f"ANSWERS DIFFER across depths ({len(answers)} kinds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user-model", type=Path, help="default: the newest trained")
    parser.add_argument("--depths", default=[1, 2, 3, 4],
                        type=lambda text: [int(d) for d in text.split(",")])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=100)
    main(parser.parse_args())
