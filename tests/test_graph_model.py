"""The image–hashtag graph, its random walks, and DeepWalk vectors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.graph.model import (
    DeepWalkParams,
    SkipGramParams,
    bipartite_graph,
    deepwalk,
    random_walks,
)

# Three images: 0 tagged {0, 1}, 1 tagged {1}, 2 tagged {2}; term t is node 3 + t.
DOCUMENTS = [[0, 1, 1], [1], [2]]


def test_bipartite_graph_links_each_image_to_its_distinct_terms() -> None:
    graph = bipartite_graph(DOCUMENTS, n_terms=3)
    neighbours = {v: sorted(graph.indices[graph.indptr[v]:graph.indptr[v + 1]].tolist())
                  for v in range(graph.n_nodes)}
    assert neighbours == {0: [3, 4], 1: [4], 2: [5], 3: [0], 4: [0, 1], 5: [2]}
    assert graph.n_edges == 4


def test_term_ids_outside_the_vocabulary_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"term ids must lie in \[0, 2\)"):
        bipartite_graph([[0, 5]], n_terms=2)


def test_every_walk_step_follows_an_edge_and_walks_are_seeded() -> None:
    graph = bipartite_graph(DOCUMENTS, n_terms=3)
    walks = random_walks(graph, walks_per_node=4, walk_length=12, seed=3, progress=False)
    assert walks.shape == (4 * 6, 12)
    edges = {(int(a), int(b)) for v in range(graph.n_nodes)
             for a, b in [(v, u) for u in graph.indices[graph.indptr[v]:graph.indptr[v + 1]]]}
    for walk in walks:
        assert all((int(a), int(b)) in edges for a, b in itertools.pairwise(walk))
    # every node starts exactly walks_per_node walks
    assert np.bincount(walks[:, 0], minlength=6).tolist() == [4] * 6
    again = random_walks(graph, walks_per_node=4, walk_length=12, seed=3, progress=False)
    assert np.array_equal(walks, again)


def test_walk_steps_are_uniform_over_neighbours() -> None:
    # A star: image 0 tagged with 4 terms; from the image each term is equally likely.
    graph = bipartite_graph([[0, 1, 2, 3]], n_terms=4)
    walks = random_walks(graph, walks_per_node=4000, walk_length=2, seed=0, progress=False,
                         start_nodes=np.array([0]))
    counts = np.bincount(walks[:, 1], minlength=5)[1:]
    assert counts.sum() == 4000 and counts.min() > 900 and counts.max() < 1100


def test_isolated_nodes_start_no_walk() -> None:
    graph = bipartite_graph([[0], []], n_terms=1)
    walks = random_walks(graph, walks_per_node=2, walk_length=3, progress=False)
    assert 1 not in walks


def test_deepwalk_puts_images_sharing_tags_closer_than_unrelated_ones() -> None:
    # Two communities of 30 images each, tags drawn from disjoint pools of 10 terms.
    rng = np.random.default_rng(0)
    documents = [rng.choice(10, 3, replace=False).tolist() for _ in range(30)] + \
                [(10 + rng.choice(10, 3, replace=False)).tolist() for _ in range(30)]
    graph = bipartite_graph(documents, n_terms=20)
    vectors = deepwalk(graph, DeepWalkParams(
        walks_per_node=20, walk_length=20,
        skipgram=SkipGramParams(dim=16, epochs=3, sample=0, workers=1)), progress=False).vectors
    images = vectors[:60] / np.linalg.norm(vectors[:60], axis=1, keepdims=True)
    similarity = images @ images.T
    same = (similarity[:30, :30].mean() + similarity[30:, 30:].mean()) / 2
    across = similarity[:30, 30:].mean()
    assert same > across + 0.3
