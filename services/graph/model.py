"""DeepWalk on the image–hashtag graph (Zhong et al. §3.2; Perozzi et al. 2014).

The graph G = (I ∪ H, E_IH) is bipartite: image i links to each of its hashtags. It is
kept as CSR arrays (``indptr``, ``indices``) so that a random-walk step for every walker
at once is three array lookups:  next = indices[indptr[v] + ⌊U·deg(v)⌋],  U ~ U[0, 1).
Skip-gram with negative sampling (gensim) then learns a vector per node from the walks
as if they were sentences.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.artifacts import ArtifactReader, ArtifactWriter
from shared.index import InnerProductIndex, l2_normalized, load_index, photo_index, save_index
from shared.photos import PhotoSet, label_weights, log_prior, machine_labels, pmi_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Graph:
    """An undirected, unweighted graph in CSR form.

    The neighbours of node v are ``indices[indptr[v]:indptr[v + 1]]``.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def n_edges(self) -> int:
        return len(self.indices) // 2


def bipartite_graph(documents: Sequence[Sequence[int]], n_terms: int) -> Graph:
    """Nodes 0..D-1 are the documents (images), D + t is term t; an edge per (document, term)."""
    n_documents = len(documents)
    lengths = np.fromiter((len(set(doc)) for doc in documents), dtype=np.int64,
                          count=n_documents)
    doc_nodes = np.repeat(np.arange(n_documents, dtype=np.int64), lengths)
    term_nodes = n_documents + np.fromiter(
        (term for doc in documents for term in sorted(set(doc))), dtype=np.int64,
        count=int(lengths.sum()))
    if len(term_nodes) and (term_nodes.min() < n_documents
                            or term_nodes.max() >= n_documents + n_terms):
        raise ValueError(f"term ids must lie in [0, {n_terms})")
    sources = np.concatenate([doc_nodes, term_nodes])
    targets = np.concatenate([term_nodes, doc_nodes])
    order = np.argsort(sources, kind="stable")
    n_nodes = n_documents + n_terms
    indptr = np.zeros(n_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(sources, minlength=n_nodes), out=indptr[1:])
    return Graph(indptr, targets[order].astype(np.int32))


def random_walks(graph: Graph, walks_per_node: int = 10, walk_length: int = 80,
                 seed: int = 0, start_nodes: np.ndarray | None = None,
                 progress: bool = True) -> np.ndarray:
    """Uniform random walks, ``walks_per_node`` from each start node (default: every node with
    a neighbour), as an int32 matrix (walks × walk_length). All walkers of a round step
    together, so the Python loop runs walk_length times per round, not once per node."""
    rng = np.random.default_rng(seed)
    degree = graph.degree
    if start_nodes is None:
        start_nodes = np.flatnonzero(degree > 0)
    isolated = int((degree[start_nodes] == 0).sum())
    if isolated:
        log.info("random walks: skipping %d isolated start nodes", isolated)
        start_nodes = start_nodes[degree[start_nodes] > 0]
    n_starts = len(start_nodes)
    walks = np.empty((walks_per_node * n_starts, walk_length), dtype=np.int32)
    indptr, indices = graph.indptr, graph.indices
    for round_ in tqdm(range(walks_per_node), desc="random walks", unit="round",
                       disable=not progress):
        rows = slice(round_ * n_starts, (round_ + 1) * n_starts)
        current = rng.permutation(start_nodes).astype(np.int64)
        walks[rows, 0] = current
        for step in range(1, walk_length):
            offsets = (rng.random(n_starts) * degree[current]).astype(np.int64)
            current = indices[indptr[current] + offsets].astype(np.int64)
            walks[rows, step] = current
    return walks


@dataclass(frozen=True)
class SkipGramParams:
    """Skip-gram settings for walks; d = 256 as Zhong et al. Window 5, not DeepWalk's 10:
    chosen on a validation split of MIRFlickr's H2L training images (`hashrec evaluate h2l
    --train dcmr:mirflickr25k --window 5,10`: validation O-F1 56.00 against 54.96)."""

    dim: int = 256
    window: int = 5
    negative: int = 5
    epochs: int = 1
    # Sub-sampling of frequent nodes (Mikolov et al.); hub hashtags fill most walk positions.
    sample: float = 1e-4
    seed: int = 0
    # One thread: gensim's worker threads update the vectors in whatever order they run
    # (Hogwild), so two runs differ; with one, the same walks give the same bytes. A
    # Ray engine runs the fits side by side instead (commands/engine.py).
    workers: int = 1


def write_walks(walks: np.ndarray, path: Path) -> None:
    """Walks as gensim's LineSentence text: node ids separated by spaces, a walk a line."""
    names = np.array([str(node) for node in range(int(walks.max()) + 1)], dtype=object)
    with path.open("w") as handle:
        for chunk in np.array_split(walks, max(1, len(walks) // 50_000)):
            handle.write("\n".join(" ".join(row) for row in names[chunk].tolist()))
            handle.write("\n")


@dataclass(frozen=True, eq=False)
class NodeVectors:
    """Skip-gram's two tables: ``vectors`` (the node as a centre word, its embedding) and
    ``context`` (the node as a context word). With negative sampling
    vectors[a] · context[b] ≈ PMI(a, b) − log(negative) (Levy & Goldberg 2014)."""

    vectors: np.ndarray
    context: np.ndarray


def skipgram(walks: np.ndarray, n_nodes: int, params: SkipGramParams = SkipGramParams(),
             ) -> NodeVectors:
    """One vector per node (zeros for nodes no walk visits), trained on the walks.

    gensim reads the walks from a file (``corpus_file``): each worker then parses its own
    share without the GIL, where an in-memory iterable is fed by one Python thread.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hashrec-walks-") as scratch:
        corpus = Path(scratch) / "walks.txt"
        write_walks(walks, corpus)
        log.info("skip-gram: %d walks, %d tokens, %s", len(walks), walks.size, asdict(params))
        # imported here: gensim (with scipy.stats) costs a serving process ~0.9 s to import
        from gensim.models import Word2Vec

        model = Word2Vec(corpus_file=os.fspath(corpus), vector_size=params.dim,
                         window=params.window, min_count=1, negative=params.negative, sg=1,
                         sample=params.sample, epochs=params.epochs, seed=params.seed,
                         workers=params.workers)
    vectors = np.zeros((n_nodes, params.dim), dtype=np.float32)
    context = np.zeros((n_nodes, params.dim), dtype=np.float32)
    nodes = np.fromiter((int(key) for key in model.wv.index_to_key), dtype=np.int64)
    vectors[nodes] = model.wv.vectors
    context[nodes] = model.syn1neg
    log.info("skip-gram: %.1f s", time.perf_counter() - started)
    return NodeVectors(vectors, context)


@dataclass(frozen=True)
class DeepWalkParams:
    walks_per_node: int = 10
    walk_length: int = 80
    skipgram: SkipGramParams = SkipGramParams()
    seed: int = 0


def deepwalk(graph: Graph, params: DeepWalkParams = DeepWalkParams(),
             progress: bool = True) -> NodeVectors:
    """Node vectors of ``graph``: random walks, then skip-gram on them."""
    walks = random_walks(graph, params.walks_per_node, params.walk_length, params.seed,
                         progress=progress)
    return skipgram(walks, graph.n_nodes, params.skipgram)


@dataclass
class JointGraphMethod:
    """Zhong et al.'s graph with the photo's machine labels as a third node type:
    image — hashtag and image — label edges, embedded by DeepWalk. A new photo is placed
    by its labels and by its visual neighbours among the training images (L2H), and the
    hashtags it most predicts are read off skip-gram's PMI estimate:

        q(x) = ½ Σ_l p(l | x) w_l + ½ mean_{j ∈ N_k(x)} w_j,   s(h | x) ∝ exp(q(x) · c_h + log P(h))
    """

    class_names: tuple[str, ...]
    params: DeepWalkParams = DeepWalkParams(
        walks_per_node=10, skipgram=SkipGramParams(dim=128, epochs=3, sample=1e-3))
    neighbours: int = 10
    name: str = "graph"
    label_index: dict[str, int] | None = None
    label_vectors: np.ndarray | None = None
    image_vectors: np.ndarray | None = None
    hashtag_context: np.ndarray | None = None
    prior: np.ndarray | None = None
    visual_index: InnerProductIndex | None = None
    photo_index_attribute = "visual_index"  # KnnMethod's

    def fit(self, photos: PhotoSet, vocab: Sequence[str]) -> None:
        labels = machine_labels(photos.probabilities, self.class_names)
        label_terms = sorted({term for photo_labels in labels for term, _ in photo_labels})
        self.label_index = {term: i for i, term in enumerate(label_terms)}
        n_hashtags = len(vocab)
        # Terms of the bipartite graph: hashtags 0..V-1, then labels V..V+L-1.
        documents = [list(ids) + [n_hashtags + self.label_index[t] for t, _ in photo_labels]
                     for ids, photo_labels in zip(photos.hashtags, labels, strict=True)]
        graph = bipartite_graph(documents, n_hashtags + len(label_terms))
        nodes = deepwalk(graph, self.params, progress=False)
        n_images = len(photos)
        self.image_vectors = nodes.vectors[:n_images]
        self.hashtag_context = nodes.context[n_images:n_images + n_hashtags]
        self.label_vectors = nodes.vectors[n_images + n_hashtags:]
        self.prior = log_prior(photos.hashtags, n_hashtags)
        self.visual_index = photo_index(l2_normalized(photos.features))

    def queries(self, photos: PhotoSet) -> np.ndarray:
        by_labels = np.zeros((len(photos), self.label_vectors.shape[1]), dtype=np.float32)
        for row, photo_labels in enumerate(machine_labels(photos.probabilities,
                                                          self.class_names)):
            for label_row, weight in label_weights(photo_labels, self.label_index):
                by_labels[row] += weight * self.label_vectors[label_row]
        _, ids = self.visual_index.search(l2_normalized(photos.features), self.neighbours)
        return 0.5 * by_labels + 0.5 * self.image_vectors[ids].mean(axis=1)

    def scores(self, photos: PhotoSet) -> np.ndarray:
        return pmi_scores(self.queries(photos), self.hashtag_context, self.prior)

    def save(self, writer: ArtifactWriter) -> None:
        writer.json(f"{self.name}/labels", sorted(self.label_index, key=self.label_index.get))
        writer.json(f"{self.name}/config", {"neighbours": self.neighbours})
        for name in ("label_vectors", "image_vectors", "hashtag_context", "prior"):
            writer.array(f"{self.name}/{name}", getattr(self, name))
        save_index(writer, f"{self.name}/visual_features", self.visual_index)

    @classmethod
    def load(cls, reader: ArtifactReader, class_names: tuple[str, ...]) -> JointGraphMethod:
        method = cls(class_names, neighbours=reader.json("graph/config")["neighbours"])
        method.label_index = {t: i for i, t in enumerate(reader.json("graph/labels"))}
        for name in ("label_vectors", "image_vectors", "hashtag_context", "prior"):
            setattr(method, name, reader.array(f"graph/{name}"))
        method.visual_index = load_index(reader, "graph/visual_features")
        return method
