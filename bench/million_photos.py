"""A million photos in a model artifact: the photo index stored at training, read whole at
load (#29 item 3). Part of bench/million.py; alone:

    python bench/million_photos.py [--photos 1000000] [--image-model DIR]

The photos are the image model's first community's kNN photos resampled with noise (as
bench/index.py makes its vectors), each keeping its source photo's hashtags. A kNN method
over them is built as `hashrec train` builds it (the index by size: IVF above 50,000
photos, tuned to recall@10 ≥ 0.95) and written as the model writes it, with the graph's
and the semantic method's index of the same photos beside it (one stored index for the
three), the semantic method's hashtag ids and the graph's 128-d vector a photo: every
array of the default model that grows with the photos. Then, in a fresh process: the
artifact verified and loaded (seconds; memory: the process's own and the index file's
map; nothing is trained), and the kNN's scores for one new photo at a time (p50 / p99),
in turns: the index read in place from the file as the services read it, and copied
into the process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from stack import memory_kib

from services.image_models import KIND, load_image_models
from services.recommender.model import KnnMethod
from shared.artifacts import ArtifactReader, ArtifactWriter, resolve_artifact
from shared.config import models_dir
from shared.index import (
    InnerProductIndex,
    l2_normalized,
    load_index,
    photo_index,
    save_index,
)
from shared.photos import PhotoSet

CHUNK = 100_000


def resampled_knn(image_model: Path, n: int, seed: int) -> tuple[np.ndarray, object, object]:
    """(n noisy copies of the first community's kNN photos, their hashtags, the source)."""
    knn = load_image_models(image_model, ("knn",)).methods["knn"]
    source = getattr(knn, "inner", [knn])[0]
    features, tags = source.index.vectors, source.train_tags
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(features), size=n)
    return noisy_copies(features, picks, rng), tags[picks], source


def noisy_copies(features: np.ndarray, picks: np.ndarray, rng: np.random.Generator,
                 ) -> np.ndarray:
    """Unit vectors: each picked row of ``features`` plus Gaussian noise of 0.3 × each
    dimension's spread (as bench/index.py makes its vectors), CHUNK rows at a time."""
    spread = 0.3 * features.std(axis=0, keepdims=True)
    out = np.empty((len(picks), features.shape[1]), np.float32)
    for start in range(0, len(picks), CHUNK):
        rows = picks[start:start + CHUNK]
        out[start:start + len(rows)] = l2_normalized(features[rows] + rng.normal(
            size=(len(rows), features.shape[1])).astype(np.float32) * spread)
    return out


def write_artifact(folder: Path, features: np.ndarray, tags: object) -> dict:
    started = time.perf_counter()
    knn = KnnMethod(k=20)
    knn.index = photo_index(features)  # as KnnMethod.fit makes it (features normalised)
    knn.train_tags = tags
    built = time.perf_counter() - started
    knn.index._chunks = []  # the index holds the vectors; the array goes
    del features
    started = time.perf_counter()
    writer = ArtifactWriter(folder)
    knn.save(writer)
    for method in ("graph", "semantic"):  # their indexes over the same photos
        save_index(writer, f"{method}/visual_features", knn.index)
    # the other per-photo arrays of the default model: the semantic method's hashtag ids
    # (the kNN's, stored once) and the graph's DeepWalk vector of each photo (128 floats;
    # random here: only their size matters)
    writer.array("semantic/tag_bounds", tags.indptr.astype(np.int64))
    writer.array("semantic/tag_ids", tags.indices.astype(np.int32))
    writer.array("graph/image_vectors", np.random.default_rng(0).normal(
        size=(knn.index.size, 128)).astype(np.float32))
    writer.close({"kind": "bench-million-photos", "photos": knn.index.size})
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"index": knn.index.kind, "setting": knn.index.setting,
            "recall_at_10": knn.index.recall, "build_s": built,
            "write_s": time.perf_counter() - started, "disk_gb": size / 1e9,
            "files": len(json.loads((folder / "manifest.json").read_text())["files"])}


def load_and_score(folder: Path, queries: int, seed: int) -> dict:
    """In this process: load the artifact (nothing trained) and score new photos, in turns
    with the index read in place from the file as the services read it and copied into
    this process (as they read it before 2300e53)."""
    started = time.perf_counter()
    reader = ArtifactReader(folder)  # verifies every file's checksum
    knn = KnnMethod.load(reader)
    shared = [load_index(reader, f"{m}/visual_features") for m in ("graph", "semantic")]
    loaded = time.perf_counter() - started
    memory = memory_kib()
    # an exact index (below HASHREC_INDEX_EXACT_MAX photos) is a copy whatever: no map
    indexes = {"mapped": knn.index, "copied": InnerProductIndex.from_faiss(
        faiss.deserialize_index(reader.array("knn/features_faiss")),
        reader.json("knn/features_index"))} if reader.has("knn/features_faiss.npy") \
        else {"copied": knn.index}
    del reader
    rng = np.random.default_rng(seed)
    index = indexes["copied"].faiss_index
    if indexes["copied"].kind in ("ivf", "ivf-sq8"):
        faiss.extract_index_ivf(index).make_direct_map()
    # new photos like the collection's: stored ones with noise
    stored = np.stack([index.reconstruct(int(i)) for i in rng.integers(index.ntotal,
                                                                       size=queries)])
    photos = l2_normalized(stored + 0.02 * rng.normal(size=stored.shape).astype(np.float32))
    times: dict[str, list[float]] = {name: [] for name in indexes}
    turns = list(indexes.items())
    for row in range(queries):
        photo = PhotoSet(photos[row:row + 1], np.zeros((1, 1000), np.float32))
        for name, one in turns[row % 2:] + turns[:row % 2]:  # each first in turn
            knn.index = one
            began = time.perf_counter()
            knn.scores(photo)
            times[name].append(1000 * (time.perf_counter() - began))
    return {"load_s": loaded,
            # after the load: the index is the model file's pages mapped (shared by
            # every process that maps them); the anonymous memory this process's own
            "anonymous_gb_after_load": memory["anonymous"] / 2**20,
            "index_map_gb": memory["index_map_size"] / 2**20,
            "index_map_resident_gb_after_load": memory["index_map_rss"] / 2**20,
            "one_index_for_the_three": all(s is knn.index for s in shared),
            **{f"knn_scores_one_photo_{how}_p{q}_ms": float(np.percentile(times[how], q))
               for how in times for q in (50, 99)},
            "queries": queries}


def photo_artifact(n: int, image_model: Path | None, seed: int = 0) -> dict:
    """The whole measurement (module docstring), its load in a fresh process."""
    model = resolve_artifact(image_model or models_dir(), KIND)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "million-photos"
        started = time.perf_counter()
        features, tags, _ = resampled_knn(model, n, seed)
        report = {"photos": n, "make_s": time.perf_counter() - started}
        print(f"  {n:,} photos made in {report['make_s']:.0f} s; building the index ...",
              flush=True)
        report.update(write_artifact(folder, features, tags))
        del features
        print(f"  written: {json.dumps(report)}", flush=True)
        loaded = subprocess.run([sys.executable, __file__, "--load", str(folder)],
                                capture_output=True, text=True, check=True)
        report.update(json.loads(loaded.stdout.strip().splitlines()[-1]))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--image-model", type=Path, default=None)
    parser.add_argument("--load", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load is not None:
        print(json.dumps(load_and_score(args.load, 500, 1)))
        return
    print(json.dumps(photo_artifact(args.photos, args.image_model), indent=1))


if __name__ == "__main__":
    main()
