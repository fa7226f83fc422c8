"""The offline pipeline on one engine and another: feature extraction and training
throughput with the local engine and with Ray at 1 and 2 workers, on the shipped photos,
in one run.

    python bench/scale.py [--photos 0] [--train-posts 300] [--workers 1,2] [--json F] [--plot F]

Feature extraction: every shipped photo (the default model's three photo sets; --photos N:
the first N) embedded into a fresh, empty feature store by each engine in turn, so each one
computes every photo: photos a second, and the ratio to the local engine's. For Ray the
time includes starting Ray and its vision actors (what a `hashrec train --engine ray` run
pays), and the start alone is shown too.

Training: `train_communities` (commands/train.py) on --train-posts posts of each photo set,
features read from the store, the five image2tag methods with three out-of-fold folds and
the final fits (the work an engine spreads): training photos a second, the ratio to local,
and whether the artifact is the local engine's byte for byte (the sha256 of every file).
This machine has 2 cores: Ray at 2 workers can at best double Ray at 1.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from commands.engine import LocalEngine, RayEngine
from commands.experiments.image2tag import METHODS, Community
from commands.train import DEFAULT_COMMUNITIES, train_communities
from services.vision.store import FeatureStore
from shared.config import setup_logging
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts


def shipped_communities(per_set: int | None) -> list[Community]:
    communities = []
    for name, spec, ignore in DEFAULT_COMMUNITIES:
        posts = [p for p in normalize_post_hashtags(read_posts(spec)) if p.image is not None]
        communities.append(Community(name, posts[:per_set] if per_set else posts, ignore))
    return communities


def run(engine_name: str, workers: int, photos: list[Path], train: list[Community],
        scratch: Path) -> dict:
    """One engine: extraction into an empty store, then training from it."""
    root = scratch / f"{engine_name}-{workers}"
    store = FeatureStore(root / "features")
    started = time.perf_counter()
    engine = LocalEngine() if engine_name == "local" else RayEngine(workers=workers)
    start_s = time.perf_counter() - started
    _, ok = engine.embed(store, photos, progress=engine_name == "local")
    extract_s = time.perf_counter() - started
    started = time.perf_counter()
    models = train_communities(train, store, root / "models", METHODS, folds=3,
                               progress=False, engine=engine)
    train_s = time.perf_counter() - started
    if isinstance(engine, RayEngine):
        engine.close()
    files = json.loads((models.directory / "manifest.json").read_text())["files"]
    n_train = json.loads((models.directory / "manifest.json").read_text())["n_train"]
    return {"engine": engine_name, "workers": workers, "photos": int(ok.sum()),
            "start_s": round(start_s, 1), "extract_s": round(extract_s, 1),
            "extract_per_s": round(int(ok.sum()) / extract_s, 1),
            "train_photos": n_train, "train_s": round(train_s, 1),
            "train_per_s": round(n_train / train_s, 1), "files": files}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["local" if r["engine"] == "local" else f"ray ×{r['workers']}" for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, key, title in ((axes[0], "extract_per_s", "feature extraction"),
                             (axes[1], "train_per_s", "training")):
        axis.bar(labels, [r[key] for r in rows], color=["#888", "#4a7", "#2a5"][:len(rows)])
        axis.set_title(f"{title} (photos / s)")
        axis.set_ylim(0, 1.15 * max(r[key] for r in rows))
        for x, row in enumerate(rows):
            axis.annotate(f"{row[key] / rows[0][key]:.2f}×", (x, row[key]), ha="center",
                          va="bottom")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=0, help="0: every shipped photo")
    parser.add_argument("--train-posts", type=int, default=300, help="a photo set")
    parser.add_argument("--workers", default="1,2", help="Ray's worker counts to run")
    parser.add_argument("--json", type=Path, default=Path("out/scale.json"))
    parser.add_argument("--plot", type=Path, default=Path("out/scale.png"))
    args = parser.parse_args()
    setup_logging()

    everything = shipped_communities(None)
    photos = list(dict.fromkeys(p.image for c in everything for p in c.posts))
    photos = photos[:args.photos] if args.photos else photos
    train = shipped_communities(args.train_posts)
    print(f"{len(photos)} photos to embed; training on {args.train_posts} posts of each of "
          f"{len(train)} photo sets, methods {', '.join(METHODS)}, 3 folds")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hashrec-scale-") as scratch:
        for name, workers in [("local", 1), *(("ray", int(w))
                                              for w in args.workers.split(","))]:
            rows.append(run(name, workers, photos, train, Path(scratch)))
            print(f"  {name} ×{workers}: done", flush=True)
    local = rows[0]
    print(f"\n{'engine':<8} {'workers':>7} {'start s':>8} {'extract s':>10} {'photos/s':>9} "
          f"{'x local':>8} {'train s':>8} {'photos/s':>9} {'x local':>8} {'artifact':>9}")
    for row in rows:
        differing = sorted(k for k in local["files"] if row["files"].get(k) != local["files"][k])
        same = "same" if row["files"] == local["files"] else f"{len(differing)} differ"
        print(f"{row['engine']:<8} {row['workers']:>7} {row['start_s']:>8.1f} "
              f"{row['extract_s']:>10.1f} {row['extract_per_s']:>9.1f} "
              f"{row['extract_per_s'] / local['extract_per_s']:>8.2f} {row['train_s']:>8.1f} "
              f"{row['train_per_s']:>9.1f} {row['train_per_s'] / local['train_per_s']:>8.2f} "
              f"{same:>9}")
        if differing:
            print(f"         differing files: {', '.join(differing)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "files"} | {
        "artifact_same_as_local": r["files"] == local["files"]} for r in rows], indent=2))
    plot(rows, args.plot)
    print(f"written {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
