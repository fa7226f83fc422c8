"""Top-10 nearest-hashtag lookup: FAISS inner-product index vs numpy brute force.

    python bench/lookup.py [--dim 1581] [--seconds 2]

For 1k, 10k and 100k hashtag vectors (dimension 1581, as services/user/lookup.py indexes
them: D = 300 hashtag embedding, then the photo model's 1280 weights and its bias),
latency of single queries and throughput of batches of 64, both ways, in the same run;
checks that both return the same top 10.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from shared.eval.metrics import top_k
from shared.index import InnerProductIndex


def timed(function, seconds: float) -> float:
    """Mean seconds per call over about ``seconds``."""
    function()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function()
        calls += 1
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1581)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'hashtags':>9}{'faiss 1q µs':>13}{'numpy 1q µs':>13}{'ratio':>7}"
          f"{'faiss 64q µs/q':>16}{'numpy 64q µs/q':>16}{'ratio':>7}  same top 10")
    for n in (1_000, 10_000, 100_000):
        vectors = rng.normal(size=(n, args.dim)).astype(np.float32)
        index = InnerProductIndex(vectors)
        single = rng.normal(size=(1, args.dim)).astype(np.float32)
        batch = rng.normal(size=(64, args.dim)).astype(np.float32)
        faiss_one = timed(lambda q=single, i=index: i.search(q, 10), args.seconds)
        numpy_one = timed(lambda q=single, v=vectors: top_k(q @ v.T, 10), args.seconds)
        faiss_batch = timed(lambda q=batch, i=index: i.search(q, 10), args.seconds) / 64
        numpy_batch = timed(lambda q=batch, v=vectors: top_k(q @ v.T, 10), args.seconds) / 64
        same = np.array_equal(index.search(batch, 10)[1], top_k(batch @ vectors.T, 10))
        print(f"{n:>9}{faiss_one * 1e6:>13.1f}{numpy_one * 1e6:>13.1f}"
              f"{numpy_one / faiss_one:>7.2f}{faiss_batch * 1e6:>16.1f}"
              f"{numpy_batch * 1e6:>16.1f}{numpy_batch / faiss_batch:>7.2f}  {same}")


if __name__ == "__main__":
    main()
