"""Nearest-photo search as the photo collection grows: exact FAISS against approximate
indexes, on real CNN features.

    python bench/index.py [--sizes 10000,100000,1000000] [--target 0.95] [--seconds 2]

The vectors are the shipped photos' EfficientNet-Lite0 features from the feature store
($HASHREC_MODELS/features; `hashrec train` fills it), resampled with noise up to each
size (a real photo's vector plus Gaussian noise of 0.3 × the features' spread, then
L2-normalised, as the visual kNN indexes them). For each size, in one run:

- exact: IndexFlatIP, what the services use today;
- IVF-Flat and IVF-SQ8 (8-bit scalar quantisation, a quarter of the memory), 4·√n lists
  trained on the data; the number of lists probed is the smallest that reaches
  ``--target`` recall@10 on tuning queries;
- HNSW (32 links; efSearch chosen the same way), up to --hnsw-max vectors (its build
  grows fastest);
- auto: what the services build (shared/index.photo_index: exact up to 50k vectors, else
  IVF-Flat), its probes tuned on the collection's own vectors, as a service must.

Recall@10 against exact search is then measured on other queries (the tuning queries
never score the setting they chose), with QPS for single queries and batches of 64,
memory (the serialised index) and build time, and each QPS as a ratio to exact's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import faiss
import numpy as np

from shared.index import EF_SEARCH, PROBES, IndexConfig, l2_normalized, photo_index, recall_at_10


def real_features() -> np.ndarray:
    """Every photo's features in the feature store (<model id>/<sha[:2]>/<sha>.npz)."""
    from shared.config import models_dir

    root = models_dir() / "features"
    rows = [np.load(path)["features"] for path in sorted(root.glob("*/*/*.npz"))]
    if not rows:
        raise SystemExit(f"no features under {root}: run `hashrec train` first")
    return np.stack(rows).astype(np.float32)


def resampled(features: np.ndarray, n: int, rng: np.random.Generator,
              chunk: int = 100_000) -> np.ndarray:
    """n vectors: real ones (all of them first), then real ones plus noise; built in
    chunks, so a million 1280-d vectors cost their own 5 GB and little more."""
    spread = 0.3 * features.std(axis=0, keepdims=True)
    out = np.empty((n, features.shape[1]), np.float32)
    real = min(n, len(features))
    out[:real] = features[:real]
    for start in range(real, n, chunk):
        stop = min(start + chunk, n)
        picks = rng.integers(len(features), size=stop - start)
        out[start:stop] = features[picks] + rng.normal(
            size=(stop - start, features.shape[1])).astype(np.float32) * spread
    return l2_normalized(out)


def per_second(function: Callable[[], object], seconds: float) -> float:
    function()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function()
        calls += 1
    return calls / (time.perf_counter() - started)


def index_megabytes(index: faiss.Index) -> float:
    """The index's size as written to disk (streamed: no second copy in memory)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "index")
        faiss.write_index(index, path)
        return os.path.getsize(path) / 2**20


def tuned(index: faiss.Index, set_knob: Callable[[int], None], knobs: tuple[int, ...],
          queries: np.ndarray, truth: np.ndarray, target: float) -> int:
    """The smallest knob whose recall@10 on the tuning queries reaches ``target``."""
    for knob in knobs:
        set_knob(knob)
        if recall_at_10(index.search(queries, 10)[1], truth) >= target:
            return knob
    return knobs[-1]


def measure(n: int, features: np.ndarray, rng: np.random.Generator,
            args: argparse.Namespace) -> None:
    """One size's rows: every index built, measured, printed and freed in turn."""
    vectors = resampled(features, n, rng)
    # queries: new photos like the collection's (other noisy copies), half to tune
    queries = resampled(features, 2 * args.queries + len(features), rng)[len(features):]
    tune, test = queries[:args.queries], queries[args.queries:]
    singles = [test[i:i + 1] for i in range(len(test))]
    batches = [test[i:i + 64] for i in range(0, len(test) - 63, 64)]
    reference: dict[str, float] = {}

    def report(name: str, index: faiss.Index, setting: str, build: float) -> None:
        """Measures one index and prints its row; the caller then frees it (at 1M
        each holds gigabytes)."""
        counter = iter(range(10**9))
        single = per_second(lambda: index.search(
            singles[next(counter) % len(singles)], 10), args.seconds)
        batch = 64 * per_second(lambda: index.search(
            batches[next(counter) % len(batches)], 10), args.seconds)
        reference.setdefault("single", single)
        reference.setdefault("batch", batch)
        recall = recall_at_10(index.search(test, 10)[1], test_truth)
        print(f"{n:>9} {name:<10} {setting:>12} {recall:>10.3f} {single:>9.0f} "
              f"{batch:>9.0f} {single / reference['single']:>10.1f} "
              f"{batch / reference['batch']:>11.1f} {index_megabytes(index):>8.1f} "
              f"{build:>8.1f}", flush=True)

    started = time.perf_counter()
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    build = time.perf_counter() - started
    tune_truth, test_truth = exact.search(tune, 10)[1], exact.search(test, 10)[1]
    report("exact", exact, "", build)
    del exact
    lists = int(4 * np.sqrt(n))
    for name, spec in (("IVF-Flat", f"IVF{lists},Flat"), ("IVF-SQ8", f"IVF{lists},SQ8")):
        started = time.perf_counter()
        index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[rng.choice(n, size=min(n, 64 * lists), replace=False)])
        index.add(vectors)
        build = time.perf_counter() - started
        ivf = faiss.extract_index_ivf(index)
        probe = tuned(index, lambda k, ivf=ivf: setattr(ivf, "nprobe", k), PROBES, tune,
                      tune_truth, args.target)
        report(name, index, f"nprobe {probe}/{lists}", build)
        del index, ivf
    if n <= args.hnsw_max:
        started = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(vectors)
        build = time.perf_counter() - started
        ef = tuned(hnsw, lambda k, hnsw=hnsw: setattr(hnsw.hnsw, "efSearch", k),
                   EF_SEARCH, tune, tune_truth, args.target)
        report("HNSW32", hnsw, f"efSearch {ef}", build)
        del hnsw
    # what the services build (shared/index.photo_index): the kind by size, its probes
    # tuned on the collection's own vectors rather than on outside queries
    started = time.perf_counter()
    chosen = photo_index(vectors, IndexConfig(recall_target=args.target))
    build = time.perf_counter() - started
    report(f"auto:{chosen.kind}", chosen.faiss_index, f"{chosen.setting or ''}", build)
    del chosen
    del vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--hnsw-max", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all)")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    features = real_features()
    print(f"{len(features)} real feature vectors of dimension {features.shape[1]}; "
          f"target recall@10 {args.target}")
    print(f"{'vectors':>9} {'index':<10} {'setting':>12} {'recall@10':>10} {'QPS 1':>9} "
          f"{'QPS 64':>9} {'x exact 1':>10} {'x exact 64':>11} {'MB':>8} {'build s':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        measure(n, features, rng, args)

if __name__ == "__main__":
    main()
