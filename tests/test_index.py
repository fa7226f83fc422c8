"""The photo indexes choose their FAISS index by size and tune it to a recall target."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest

from services.recommender.model import KnnMethod
from shared.artifacts import ArtifactWriter
from shared.index import (
    IndexConfig,
    InnerProductIndex,
    l2_normalized,
    photo_index,
    recall_at_10,
    save_index,
)
from shared.photos import PhotoSet


def clustered(n: int, dim: int = 64, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` centres (the same for every seed: new photos like
    the collection's), as photo features cluster by subject."""
    centres = np.random.default_rng(dim).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    return l2_normalized(centres[rng.integers(clusters, size=n)]
                         + 0.5 * rng.normal(size=(n, dim)))


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def test_small_collections_get_an_exact_index():
    vectors = clustered(600)
    index = photo_index(vectors, IndexConfig(exact_max=1000))
    queries = clustered(20, seed=1)
    assert index.kind == "flat" and index.recall == 1.0
    assert recall_at_10(index.search(queries, 10)[1], exact_top(vectors, queries, 10)) == 1.0


def test_large_collections_get_an_ivf_index_tuned_to_the_recall_target():
    vectors = clustered(8000)
    index = photo_index(vectors, IndexConfig(exact_max=1000, recall_target=0.95))
    assert index.kind == "ivf"
    lists = int(4 * np.sqrt(8000))
    # fewer lists probed than there are: the index searches less than all of them
    assert index.setting is not None and index.setting < lists
    assert index.recall >= 0.95
    # new queries, never seen while tuning, still find most of their true neighbours
    queries = clustered(200, seed=2)
    assert recall_at_10(index.search(queries, 10)[1], exact_top(vectors, queries, 10)) >= 0.9


def test_a_higher_recall_target_probes_more_lists():
    vectors = clustered(8000)
    low = photo_index(vectors, IndexConfig(exact_max=1000, recall_target=0.5))
    high = photo_index(vectors, IndexConfig(exact_max=1000, recall_target=0.99))
    assert low.setting < high.setting
    assert high.recall >= 0.99


def test_a_memory_budget_quantises_the_vectors():
    vectors = clustered(4000)
    flat_mb = vectors.nbytes / 2**20
    index = photo_index(vectors, IndexConfig(exact_max=1000, memory_mb=flat_mb / 2))
    assert index.kind == "ivf-sq8"
    queries = clustered(100, seed=3)
    assert recall_at_10(index.search(queries, 10)[1], exact_top(vectors, queries, 10)) >= 0.8


def test_hnsw_when_asked_for():
    vectors = clustered(3000)
    index = photo_index(vectors, IndexConfig(kind="hnsw", recall_target=0.95))
    assert index.kind == "hnsw" and index.recall >= 0.95
    queries = clustered(100, seed=4)
    assert recall_at_10(index.search(queries, 10)[1], exact_top(vectors, queries, 10)) >= 0.9


def test_photos_added_to_an_ivf_index_are_found():
    vectors = clustered(5000)
    index = photo_index(vectors, IndexConfig(exact_max=1000))
    added = clustered(10, seed=5)
    index.add(added)
    _, ids = index.search(added, 1)
    assert list(ids[:, 0]) == list(range(5000, 5010))
    assert index.size == 5010 and len(index.vectors) == 5010


def test_an_approximate_search_never_answers_with_missing_rows():
    # one list probed and k larger than most lists: FAISS pads with -1, which would index
    # the last photo; those queries are answered exactly instead
    vectors = clustered(2000)
    index = photo_index(vectors, IndexConfig(kind="ivf", recall_target=0.01))
    assert index.setting == 1
    queries = clustered(50, seed=6)
    scores, ids = index.search(queries, 300)
    assert (ids >= 0).all() and np.isfinite(scores).all()


def test_hashtag_indexes_stay_exact_whatever_their_size(monkeypatch):
    monkeypatch.setenv("HASHREC_INDEX_EXACT_MAX", "10")
    assert InnerProductIndex(clustered(500)).kind == "flat"
    assert photo_index(clustered(500)).kind == "ivf"


def test_the_visual_knn_uses_the_configured_index(monkeypatch):
    features = clustered(3000, dim=32)
    photos = PhotoSet(features, np.zeros((3000, 4), np.float32),
                      [[i % 7] for i in range(3000)])
    monkeypatch.setenv("HASHREC_INDEX_EXACT_MAX", "1000")
    approximate = KnnMethod()
    approximate.fit(photos, [f"t{i}" for i in range(7)])
    monkeypatch.setenv("HASHREC_INDEX", "flat")
    exact = KnnMethod()
    exact.fit(photos, [f"t{i}" for i in range(7)])
    assert approximate.index.kind == "ivf" and exact.index.kind == "flat"
    queries = PhotoSet(clustered(100, dim=32, seed=7), np.zeros((100, 4), np.float32))
    agree = np.mean(approximate.scores(queries).argmax(1) == exact.scores(queries).argmax(1))
    assert agree >= 0.9


@pytest.mark.parametrize(("name", "value", "words"), [
    ("HASHREC_INDEX", "kd-tree", "index kind"),
    ("HASHREC_INDEX_RECALL", "most", "HASHREC_INDEX_RECALL"),
    ("HASHREC_INDEX_RECALL", "1.5", "recall target"),
    ("HASHREC_INDEX_EXACT_MAX", "-1", "exact_max"),
    ("HASHREC_INDEX_MEMORY_MB", "lots", "HASHREC_INDEX_MEMORY_MB"),
])
def test_bad_index_settings_are_named(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=words):
        IndexConfig.from_env()


def test_a_growing_collection_moves_from_exact_to_approximate():
    vectors = clustered(900)
    index = photo_index(vectors, IndexConfig(exact_max=1000))
    assert index.kind == "flat"
    index.add(clustered(300, seed=8))
    assert index.kind == "ivf" and index.size == 1200
    queries = clustered(50, seed=9)
    everything = np.vstack([vectors, clustered(300, seed=8)])
    assert recall_at_10(index.search(queries, 10)[1], exact_top(everything, queries, 10)) >= 0.9
    # doubled since it was built: the lists are trained again, for 2,500 vectors
    index.add(clustered(1300, seed=10))
    assert index.built_size == 2500


def test_the_knn_votes_of_its_sparse_tags_are_the_dense_weighted_sum_and_old_models_load(
        tmp_path) -> None:
    from shared.artifacts import ArtifactReader, ArtifactWriter

    rng = np.random.default_rng(3)
    hashtags = [[*rng.choice(40, size=rng.integers(1, 6), replace=False).tolist(), 0]
                for _ in range(300)]  # a tag given twice counts once
    photos = PhotoSet(clustered(300, dim=16), np.zeros((300, 4), np.float32), hashtags)
    knn = KnnMethod(k=7)
    knn.fit(photos, [f"t{i}" for i in range(40)])
    queries = PhotoSet(clustered(25, dim=16, seed=5), np.zeros((25, 4), np.float32))
    similarity, ids = knn.neighbours(queries)
    dense = np.zeros((300, 40), np.float32)
    for row, tags in enumerate(hashtags):
        dense[row, tags] = 1.0
    expected = np.einsum("nk,nkv->nv", np.clip(similarity, 0, None), dense[ids])
    np.testing.assert_allclose(knn.scores(queries), expected, rtol=1e-5, atol=1e-6)
    assert knn.train_tags.nnz == sum(len(set(t)) for t in hashtags)
    # a model written before the tags were sparse (photos × hashtags, dense) still loads
    writer = ArtifactWriter(tmp_path / "old")
    writer.array("knn/features", knn.index.vectors)
    writer.array("knn/train_tags", dense)
    writer.json("knn/config", {"k": 7})
    writer.close({"kind": "test"})
    old = KnnMethod.load(ArtifactReader(tmp_path / "old"))
    np.testing.assert_allclose(old.scores(queries), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_a_stored_photo_index_loads_as_built_and_is_stored_and_loaded_once(
        tmp_path, monkeypatch, kind: str) -> None:
    """kNN, graph and semantic index the same photos: the artifact holds the index once
    (its tuning with it), loading trains nothing, and one process shares one index."""
    from shared.artifacts import ArtifactReader, ArtifactWriter
    from shared.index import load_index, save_index

    vectors = clustered(3000, dim=32)
    config = IndexConfig(kind=kind)
    built = [InnerProductIndex(vectors, config) for _ in range(3)]  # each method's fit
    writer = ArtifactWriter(tmp_path / "model")
    for method, index in zip(("knn", "graph", "semantic"), built, strict=True):
        save_index(writer, f"{method}/visual_features", index)
    writer.close({"kind": "test"})
    stored = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert len(stored["files"]) == (1 if kind == "flat" else 4)  # the index once (+ tuning)
    built_again = []
    if kind != "flat":  # an exact index is its vectors copied in: nothing to train
        monkeypatch.setattr(InnerProductIndex, "_build", lambda self: built_again.append(1))
    reader = ArtifactReader(tmp_path / "model")
    loaded = [load_index(reader, f"{m}/visual_features") for m in ("knn", "graph", "semantic")]
    assert loaded[0] is loaded[1] is loaded[2] and not built_again
    assert loaded[0].kind == built[0].kind and loaded[0].setting == built[0].setting
    queries = clustered(50, dim=32, seed=4)
    np.testing.assert_array_equal(loaded[0].search(queries, 10)[1],
                                  built[0].search(queries, 10)[1])
    np.testing.assert_allclose(loaded[0].vectors, vectors, atol=1e-6)
    monkeypatch.undo()
    # a new reader (a reload) loads its own; the old goes with its reader and methods
    again = load_index(ArtifactReader(tmp_path / "model"), "knn/visual_features")
    assert again is not loaded[0]
    gone = weakref.ref(loaded[0])
    del loaded, reader
    gc.collect()
    assert gone() is None
    again.add(clustered(5, dim=32, seed=9))  # a loaded index grows like a built one
    assert len(again.vectors) == 3005 and again.search(again.vectors[-1:], 1)[1][0, 0] == 3004


def test_the_semantic_neighbour_query_from_sparse_tags_is_the_sum_of_their_text() -> None:
    """q_N = Σ_j w_j Σ_{g ∈ H_j} e_g, computed from the neighbours' hashtag ids where the
    model once stored each training photo's summed text (1.5 KB a photo)."""
    from services.word.semantic import SemanticMethod
    from shared.photos import sparse_hashtag_matrix

    rng = np.random.default_rng(8)
    hashtags = [rng.choice(30, size=rng.integers(1, 5), replace=False).tolist()
                for _ in range(200)]
    features = clustered(200, dim=16)
    method = SemanticMethod(("a",), neighbours=6, n_vocabulary=30,
                            hashtag_vectors=rng.normal(size=(45, 8)).astype(np.float32),
                            visual_index=photo_index(features),
                            train_tags=sparse_hashtag_matrix(hashtags, 30))
    queries = PhotoSet(clustered(12, dim=16, seed=3), np.zeros((12, 4), np.float32))
    summed = np.stack([method.hashtag_vectors[ids].sum(axis=0) for ids in hashtags])
    old = SemanticMethod(("a",), neighbours=6, n_vocabulary=30,
                         hashtag_vectors=method.hashtag_vectors,
                         visual_index=method.visual_index, neighbour_text=summed)
    for exclude_self in (False, True):
        np.testing.assert_allclose(method._neighbour_queries(queries, exclude_self),
                                   old._neighbour_queries(queries, exclude_self),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_spilled_index_is_pickled_as_a_file_name_and_read_back_from_the_file(
        tmp_path: Path, kind: str) -> None:
    """A final fit's index spilled to a folder the driver shares: its pickle is a few
    hundred bytes (the file's name), kNN's and semantic's equal indexes write one file, and
    the index read back (an exact one's vectors mapped read-only) answers as it did."""
    import pickle

    vectors = clustered(3000, dim=32)
    index, twin = (InnerProductIndex(vectors, IndexConfig(kind=kind)) for _ in range(2))
    for one in (index, twin):
        one.spill_to(tmp_path)
    pickled, _ = pickle.dumps(index), pickle.dumps(twin)
    assert len(pickled) < 2000 and len(list(tmp_path.iterdir())) == 1
    copy = pickle.loads(pickled)
    assert copy.same_as(index) and copy.kind == kind and copy.setting == index.setting
    if kind == "flat":
        assert isinstance(copy.vectors, np.memmap) and copy._index is None
    # the driver writes it into the model from the file, which it never reads through
    # its map (those pages would count in its memory): the bytes the built index writes
    (spilled,) = tmp_path.iterdir()
    written = {}
    for name, one in (("built", index), ("read back", copy)):
        writer = ArtifactWriter(tmp_path / name)
        save_index(writer, "knn/features", one)
        written[name] = writer.files
    assert written["read back"] == written["built"] and written["built"]
    maps = Path("/proc/self/maps").read_text().splitlines()
    assert any(line.endswith(str(spilled)) for line in maps)  # read in place, not copied
    assert _resident_kib(spilled) < spilled.stat().st_size / 1024 / 4
    queries = clustered(40, dim=32, seed=5)
    np.testing.assert_array_equal(copy.search(queries, 10)[1], index.search(queries, 10)[1])


def _resident_kib(path: Path) -> int:
    """This process's resident KiB of its maps of ``path`` (/proc/self/smaps)."""
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
            inside = fields[-1] == str(path)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1])
    return resident


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf-sq8"])
def test_a_pickled_index_carries_the_photos_once_and_answers_and_grows_as_before(
        kind: str) -> None:
    """A fit's index comes back from a pool's worker pickled; an exact one travels as its
    vectors alone, an approximate one as FAISS's index alone (the driver holds the photos
    once: two copies pickled to 2.1 times the vectors), and each searches, compares equal
    to an index of the same rows and unequal to one of other rows, and grows as before."""
    import pickle

    vectors = clustered(3000, dim=32)
    index = InnerProductIndex(vectors, IndexConfig(kind=kind))
    copy = pickle.loads(pickle.dumps(index))
    assert len(pickle.dumps(index)) < 1.5 * vectors.nbytes
    if kind == "flat":
        assert copy._index is None
    if kind != "ivf-sq8":  # its vectors come back quantised
        np.testing.assert_array_equal(copy.vectors, index.vectors)
    same = InnerProductIndex(vectors.copy(), IndexConfig(kind=kind))
    other = vectors.copy()
    other[7] = other[8]
    assert copy.same_as(same) and same.same_as(copy)
    assert not copy.same_as(InnerProductIndex(other, IndexConfig(kind=kind)))
    grown, more = (pickle.loads(pickle.dumps(index)) for _ in range(2))
    grown.add(clustered(1, dim=32, seed=7))
    more.add(clustered(1, dim=32, seed=8))
    assert not grown.same_as(more)  # as many rows, not the same ones
    queries = clustered(40, dim=32, seed=5)
    for one in (index, copy):
        one.add(clustered(7, dim=32, seed=6))
    np.testing.assert_array_equal(copy.search(queries, 10)[1], index.search(queries, 10)[1])
    np.testing.assert_array_equal(copy.search(queries, 10, excluded=[1, 2])[1],
                                  index.search(queries, 10, excluded=[1, 2])[1])
    assert copy.size == index.size == 3007 and copy.faiss_index.ntotal == 3007


_LOAD_IN_PLACE = """
import json, sys
from pathlib import Path
import numpy as np
from shared.artifacts import ArtifactReader
from shared.index import load_index

def anonymous_kib():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1])

folder = Path(sys.argv[1])
reader = ArtifactReader(folder)
before = anonymous_kib()
index = load_index(reader, "knn/visual_features")
del reader
mapped = [line.split()[-1] for line in open("/proc/self/maps") if line.endswith(".npy\\n")]
queries = np.load(folder.parent / "queries.npy")
report = {"anonymous_kib": anonymous_kib() - before, "mapped": mapped,
          "ids": index.search(queries, 5)[1].tolist()}
# more than the probed lists hold: wider probes of the mapped lists, no rows copied out
wide = [index.search(queries, 1500)[1], index.search(queries, 1500, excluded=[0, 1])[1]]
report["wide"] = [bool((ids >= 0).all()) for ids in wide] + [
    not {0, 1} & set(wide[1].ravel().tolist()), len(index._chunks)]
report["anonymous_after_wide_kib"] = anonymous_kib() - before
index.add(queries[:3])  # grown in place (the kind unchanged): FAISS's copy of its own
report["grown"] = [index.size, index.faiss_index.ntotal,
                   index.search(queries[2:3], 1)[1][0, 0].item()]
print(json.dumps(report))
"""


@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8"])
def test_a_loaded_approximate_index_is_read_in_place_from_the_model_file(
        tmp_path: Path, kind: str) -> None:
    """The recommender, word and graph services each load the model's photo index: it is
    read in place from the verified file (the kernel's file pages, one set for every
    process), not copied into each process (5.2 GB each at a million photos), answers as
    built, also when the probed lists hold fewer than asked
    for (wider probes, no rows copied out), and grows as a built one does."""
    import os
    import subprocess
    import sys

    from shared.artifacts import ArtifactWriter
    from shared.index import save_index

    vectors = clustered(24_000, dim=256)
    index = InnerProductIndex(vectors, IndexConfig(kind=kind))
    writer = ArtifactWriter(tmp_path / "model")
    save_index(writer, "knn/visual_features", index)
    writer.close({"kind": "test"})
    stored = tmp_path / "model" / "knn" / "visual_features_faiss.npy"
    queries = clustered(20, dim=256, seed=3)
    np.save(tmp_path / "queries.npy", queries)
    run = subprocess.run([sys.executable, "-c", _LOAD_IN_PLACE, str(tmp_path / "model")],
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1],
                         env={**os.environ, "HASHREC_INDEX": kind})
    assert run.returncode == 0, run.stderr[-2000:]  # FAISS aborts on growing a mapped index
    loaded = json.loads(run.stdout)
    assert loaded["mapped"] == [str(stored)]
    assert loaded["anonymous_kib"] < stored.stat().st_size / 1024 / 4, loaded
    np.testing.assert_array_equal(loaded["ids"], index.search(queries, 5)[1])
    assert loaded["wide"] == [True, True, True, 0], loaded["wide"]
    assert loaded["anonymous_after_wide_kib"] < vectors.nbytes / 1024 / 2  # no rows copied
    assert loaded["grown"] == [24_003, 24_003, 24_002]
