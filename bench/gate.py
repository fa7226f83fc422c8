"""The community gate, P(community | photo), chosen on validation photos: how often it
names a photo's own community and what probability it gives it, by the gate's strength
(the logistic regression's C) and its inputs.

    python bench/gate.py [--hold-out 0] [--valid-splits 3] [--strengths 0.001,...]

Validation is the training part of `hashrec train --hold-out SEED` (each set's seeded
80 %), split 80/20 again with SEED + 1, ..., SEED + --valid-splits, so the photos
`evaluate served` reports on take no part in the choice. The gate is fit as training fits
it (`CommunityGate.fit`, class-balanced) on the photos with a vocabulary hashtag of every
community, and asked about the validation part's. Reported per community, the mean over
the splits: accuracy (the own community most probable), the mean probability of the own
community, and the mean log-loss over all photos. Writes out/gate.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from commands.experiments.image2tag import Community, community_photos
from commands.train import DEFAULT_COMMUNITIES, held_out_split
from services.recommender.model import CommunityGate
from services.vision.store import FeatureStore
from shared.config import models_dir, setup_logging
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from shared.data.split import seeded_split
from shared.photos import PhotoSet


def validation_splits(hold_out: int, n_splits: int,
                      ) -> list[tuple[list[Community], list[Community]]]:
    """(training, validation) communities for each split of the held-out training part."""
    parts = []
    for name, spec, ignore in DEFAULT_COMMUNITIES:
        train, _ = held_out_split(normalize_post_hashtags(read_posts(spec)), hold_out)
        parts.append((name, ignore, [seeded_split(train, hold_out + 1 + i)
                                     for i in range(n_splits)]))
    return [([Community(name, pairs[i][0], ignore) for name, ignore, pairs in parts],
             [Community(name, pairs[i][1], ignore) for name, ignore, pairs in parts])
            for i in range(n_splits)]


def with_probabilities(photos: PhotoSet) -> PhotoSet:
    """The CNN features and the ImageNet class log-probabilities side by side."""
    joined = np.hstack([photos.features, np.log(photos.probabilities + 1e-6)])
    return PhotoSet(joined, photos.probabilities, photos.hashtags, photos.communities)


class SklearnGate:
    """Another classifier as the gate, to see whether a richer one names communities
    better than the logistic regression: k nearest photos by cosine, or an MLP, each fit
    on class-balanced photos."""

    def __init__(self, kind: str, photos: PhotoSet) -> None:
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = KNeighborsClassifier(25, metric="cosine", weights="distance") \
            if kind == "knn" else make_pipeline(StandardScaler(), MLPClassifier(
                (256,), alpha=1.0, max_iter=300, early_stopping=True, random_state=0))
        # balanced as the logistic regression is (class_weight): each community's photos
        # drawn with replacement to the largest's number
        rng = np.random.default_rng(0)
        largest = np.bincount(photos.communities).max()
        rows = np.concatenate([rng.choice(np.flatnonzero(photos.communities == c), largest)
                               for c in np.unique(photos.communities)])
        self.model.fit(photos.features[rows], photos.communities[rows])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.clip(self.model.predict_proba(features), 1e-6, 1.0)


def measure(gate: CommunityGate | SklearnGate, photos: PhotoSet,
            names: list[str]) -> dict[str, float]:
    p = gate(photos.features)
    own = p[np.arange(len(photos)), photos.communities]
    row = {"log_loss": float(-np.log(own + 1e-12).mean())}
    for number, name in enumerate(names):
        mine = photos.communities == number
        row[f"{name}_accuracy"] = float((p[mine].argmax(axis=1) == number).mean())
        row[f"{name}_own_p"] = float(own[mine].mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold-out", type=int, default=0)
    parser.add_argument("--valid-splits", type=int, default=3)
    parser.add_argument("--strengths", default="0.0003,0.001,0.003,0.01,0.03,0.1")
    parser.add_argument("--out", type=Path, default=Path("out/gate.json"))
    args = parser.parse_args()
    setup_logging()
    store = FeatureStore(models_dir() / "features")
    names = [name for name, _, _ in DEFAULT_COMMUNITIES]
    inputs = {"features": lambda s: s, "features+class log-p": with_probabilities}
    runs: dict[str, list[dict[str, float]]] = {}
    for number, (train, valid) in enumerate(validation_splits(args.hold_out,
                                                              args.valid_splits)):
        fit_photos = community_photos(train, store, 3, 1000, progress=False)[0]
        valid_photos = community_photos(valid, store, 1, 1000, progress=False)[0]
        for input_name, transform in inputs.items():
            for strength in (float(s) for s in args.strengths.split(",")):
                started = time.perf_counter()
                gate = CommunityGate.fit(transform(fit_photos), strength)
                row = measure(gate, transform(valid_photos), names)
                row["fit_seconds"] = time.perf_counter() - started
                runs.setdefault(f"{input_name}, C={strength:g}", []).append(row)
        for kind in ("knn", "mlp"):
            started = time.perf_counter()
            row = measure(SklearnGate(kind, fit_photos), valid_photos, names)
            row["fit_seconds"] = time.perf_counter() - started
            runs.setdefault(f"{kind} gate", []).append(row)
        print(f"split {number + 1}/{args.valid_splits}: {len(fit_photos)} training, "
              f"{len(valid_photos)} validation photos", flush=True)
    table = {key: {m: round(float(np.mean([r[m] for r in rows])), 4) for m in rows[0]}
             for key, rows in runs.items()}
    header = ["gate"] + [f"{n} acc / p" for n in names] + ["log-loss", "fit s"]
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for key, row in table.items():
        cells = [f"{100 * row[f'{n}_accuracy']:.1f} / {row[f'{n}_own_p']:.2f}" for n in names]
        print(f"| {key} | " + " | ".join(cells)
              + f" | {row['log_loss']:.3f} | {row['fit_seconds']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"hold_out": args.hold_out, "table": table}, indent=1))


if __name__ == "__main__":
    main()
