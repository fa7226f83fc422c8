"""Time to embed the MIRFlickr image–hashtag graph, next to PecanPy, with the H2L O-P each gives.

    python bench/embeddings.py [--train dcmr:mirflickr25k] [--skip-pecanpy]

Both sides use the same graph, the same walk settings (10 walks per node, length 80,
first-order unweighted) and the same dimension (256); each side's skip-gram is that side's
own setting: PecanPy's `embed` (gensim, window 10, one epoch, walks held in memory) and
hashrec's (gensim from a walk file, window 5, one epoch, sub-sampling 1e-4). Each embedding
is scored by the same H2L logistic classifier on the same seeded 80/20 split.
Prints seconds per stage, O-P / O-R / O-F1 and the ratios hashrec / PecanPy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from commands.experiments.zhong import Example, prepare, rank_targets, target_matrix
from services.graph.model import SkipGramParams, bipartite_graph, random_walks, skipgram
from shared.config import setup_logging
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from shared.data.split import seeded_split
from shared.eval.metrics import overall_precision_recall_f1

WALKS_PER_NODE, WALK_LENGTH, DIM = 10, 80, 256


def h2l_scores(node_vectors: np.ndarray, n_train: int, y_train: np.ndarray,
               truth: list[frozenset[int]]) -> dict[str, float]:
    n_images = n_train + len(truth)
    ranked = rank_targets(node_vectors[:n_train], y_train, node_vectors[n_train:n_images])
    return overall_precision_recall_f1(ranked, truth, 3)


def pecanpy_embedding(indptr: np.ndarray, indices: np.ndarray, workers: int,
                      ) -> tuple[np.ndarray, float, float, float]:
    """(vectors in our node order, first walk time incl. numba compile, warm walk time,
    skip-gram time) with PecanPy's FirstOrderUnweighted and its embed() settings."""
    from gensim.models import Word2Vec
    from pecanpy.pecanpy import FirstOrderUnweighted

    sources = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    upper = sources < indices  # each undirected edge once
    with tempfile.TemporaryDirectory() as scratch:
        edges = Path(scratch) / "graph.edg"
        np.savetxt(edges, np.stack([sources[upper], indices[upper]], axis=1), fmt="%d",
                   delimiter="\t")
        graph = FirstOrderUnweighted(workers=workers, random_state=0)
        graph.read_edg(str(edges), weighted=False, directed=False)
    started = time.perf_counter()
    walks = graph.simulate_walks(num_walks=WALKS_PER_NODE, walk_length=WALK_LENGTH)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    walks = graph.simulate_walks(num_walks=WALKS_PER_NODE, walk_length=WALK_LENGTH)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    model = Word2Vec(walks, vector_size=DIM, window=10, sg=1, min_count=0, workers=workers,
                     epochs=1, seed=0)
    train_seconds = time.perf_counter() - started
    vectors = np.zeros((len(indptr) - 1, DIM), dtype=np.float32)
    nodes = np.array([int(node) for node in graph.nodes])
    vectors[nodes] = model.wv[graph.nodes]
    return vectors, cold, warm, train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="dcmr:mirflickr25k")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-pecanpy", action="store_true")
    args = parser.parse_args()
    setup_logging("WARNING")

    posts = normalize_post_hashtags(read_posts(args.train))
    train, test = seeded_split([Example(p.hashtags, p.labels or ()) for p in posts], seed=0)
    train, test, input_vocab, target_vocab = prepare(train, test, min_input_count=5)
    y_train = target_matrix(train, target_vocab)
    truth = [frozenset(target_vocab.encode(ex.targets)) for ex in test]
    graph = bipartite_graph([input_vocab.encode(ex.inputs) for ex in (*train, *test)],
                            len(input_vocab))
    print(f"graph: {graph.n_nodes} nodes ({len(train) + len(test)} images), "
          f"{graph.n_edges} edges; {WALKS_PER_NODE} walks/node x {WALK_LENGTH}, d = {DIM}")

    started = time.perf_counter()
    walks = random_walks(graph, WALKS_PER_NODE, WALK_LENGTH, seed=0, progress=False)
    ours_walks = time.perf_counter() - started
    started = time.perf_counter()
    vectors = skipgram(walks, graph.n_nodes,
                       SkipGramParams(dim=DIM, workers=args.workers)).vectors
    ours_skipgram = time.perf_counter() - started
    ours = h2l_scores(vectors, len(train), y_train, truth)
    rows = [("hashrec", ours_walks, ours_walks, ours_skipgram, ours)]

    if not args.skip_pecanpy:
        vectors, cold, warm, train_seconds = pecanpy_embedding(graph.indptr, graph.indices,
                                                               args.workers)
        rows.append(("pecanpy", cold, warm, train_seconds,
                     h2l_scores(vectors, len(train), y_train, truth)))

    print(f"{'':<10}{'walks s':>10}{'warm s':>9}{'skip-gram s':>13}{'total s':>9}"
          f"{'O-P':>8}{'O-R':>8}{'O-F1':>8}")
    for name, cold, warm, train_seconds, scores in rows:
        print(f"{name:<10}{cold:>10.2f}{warm:>9.2f}{train_seconds:>13.1f}"
              f"{cold + train_seconds:>9.1f}{scores['O-P']:>8.2f}{scores['O-R']:>8.2f}"
              f"{scores['O-F1']:>8.2f}")
    if len(rows) == 2:
        (_, ours_cold, ours_warm, ours_train, ours_scores), (_, cold, warm, train_seconds,
                                                             scores) = rows
        print(f"ratio hashrec/pecanpy: walks {ours_warm / warm:.2f} (warm), "
              f"skip-gram {ours_train / train_seconds:.2f}, "
              f"total {(ours_cold + ours_train) / (cold + train_seconds):.2f}; "
              f"O-P {ours_scores['O-P'] - scores['O-P']:+.2f} points")


if __name__ == "__main__":
    main()
