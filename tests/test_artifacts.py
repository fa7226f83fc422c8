"""Model artifacts: an array written under two names is one file and, read back, one
read-only array; a manifest whose alias points nowhere is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.artifacts import SHARED_MIN_BYTES, ArtifactReader, ArtifactWriter


def _written(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    features = np.random.default_rng(0).normal(size=(100, 256)).astype(np.float32)
    small = np.arange(4, dtype=np.float32)
    writer = ArtifactWriter(directory)
    writer.array("knn/features", features)
    writer.array("graph/visual_features", features.copy())  # the same bytes, another name
    writer.array("graph/prior", small)
    writer.array("frequency/prior", small)
    writer.array("mlp/mean", features[:1])
    writer.close({"kind": "test"})
    return features, small


def test_an_array_written_under_two_names_is_one_file_and_one_read_only_array(
        tmp_path: Path) -> None:
    features, small = _written(tmp_path)
    assert features.nbytes >= SHARED_MIN_BYTES > small.nbytes
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["aliases"] == {"graph/visual_features.npy": "knn/features.npy"}
    assert not (tmp_path / "graph" / "visual_features.npy").exists()
    assert (tmp_path / "frequency" / "prior.npy").exists()  # too small to share
    reader = ArtifactReader(tmp_path)
    first, second = reader.array("knn/features"), reader.array("graph/visual_features")
    assert first is second and np.array_equal(first, features)
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0] = 1.0  # one method's change would reach the others
    assert reader.array("mlp/mean").flags.writeable  # an unshared array is the reader's own
    assert reader.has("graph/visual_features.npy")
    assert sorted(reader.arrays()) == ["frequency/prior", "graph/prior",
                                       "graph/visual_features", "knn/features", "mlp/mean"]


def test_an_alias_of_a_file_the_manifest_lacks_is_refused(tmp_path: Path) -> None:
    _written(tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["aliases"]["semantic/visual_features.npy"] = "knn/missing.npy"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"alias of knn/missing\.npy"):
        ArtifactReader(tmp_path)
    manifest["aliases"] = {"mlp/mean.npy": "knn/features.npy"}  # two files for one name
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="or a file of its own"):
        ArtifactReader(tmp_path)
    manifest["aliases"] = {"semantic/visual_features.npy": ["knn/features.npy"]}
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="is an alias of"):  # not a TypeError
        ArtifactReader(tmp_path)


def test_a_name_written_twice_is_refused(tmp_path: Path) -> None:
    """An alias of it, or a later array with its old bytes, would name bytes since
    replaced."""
    big = np.zeros(SHARED_MIN_BYTES // 4, dtype=np.float32)
    writer = ArtifactWriter(tmp_path)
    writer.array("knn/features", big)
    writer.array("graph/features", big.copy())  # an alias of knn/features
    for name in ("knn/features", "graph/features"):
        with pytest.raises(ValueError, match=f"{name}.npy written twice"):
            writer.array(name, big + 1)


@pytest.mark.parametrize("damage", [{"files": None}, {"aliases": ["knn/features.npy"]}])
def test_a_manifest_without_its_mappings_is_refused_by_name(tmp_path: Path,
                                                             damage: dict) -> None:
    _written(tmp_path)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **damage}))
    with pytest.raises(ValueError, match='no "files"'):
        ArtifactReader(tmp_path)


def test_arrays_and_a_faiss_index_are_streamed_to_their_files_never_copied_whole(
        tmp_path: Path) -> None:
    """A written array is np.save's bytes, and a FAISS index save_index writes is the
    serialised index as a uint8 array, both byte for byte, yet neither is ever copied
    whole in memory on the way (the training driver's peak at 100,000 photos was the model's
    writing: a 0.5 GB index serialised, then copied again into a buffer); the index
    written under a second name is an alias of the first, and no scratch file stays."""
    import io
    import tracemalloc

    import faiss

    from shared.index import IndexConfig, InnerProductIndex, load_index, save_index

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6_400, 4096)).astype(np.float32)  # 105 MB
    index = InnerProductIndex(vectors, IndexConfig(kind="ivf"))
    writer = ArtifactWriter(tmp_path)
    tracemalloc.start()
    try:
        writer.array("vectors", vectors)
        save_index(writer, "knn/features", index)
        # a community's method writes through a scoped writer
        save_index(writer.scoped("community/a").scoped("graph"), "visual_features", index)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < vectors.nbytes / 2  # numpy's 16 MiB chunks, not the 105 MB
    writer.close({"kind": "test"})
    expected = io.BytesIO()
    np.save(expected, vectors)
    assert (tmp_path / "vectors.npy").read_bytes() == expected.getvalue()
    expected = io.BytesIO()
    np.save(expected, faiss.serialize_index(index.faiss_index))
    assert (tmp_path / "knn/features_faiss.npy").read_bytes() == expected.getvalue()
    assert writer.aliases == {
        "community/a/graph/visual_features_faiss.npy": "knn/features_faiss.npy"}
    assert not [p for p in tmp_path.rglob(".*")]
    loaded = load_index(ArtifactReader(tmp_path), "community/a/graph/visual_features")
    queries = vectors[:5]
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_bytes_written_otherwise_the_second_time_are_refused_and_leave_no_file(
        tmp_path: Path) -> None:
    """bytes_array counts what ``produce`` writes, then writes it: a producer that writes
    other bytes the second time is refused, and no file is left under either name."""
    calls = []

    def produce(out) -> None:
        calls.append(1)
        out.write(b"x" * (100 * len(calls)))

    writer = ArtifactWriter(tmp_path)
    with pytest.raises(ValueError, match="wrote 200 bytes, counted 100"):
        writer.bytes_array("index", produce)
    assert not list(tmp_path.iterdir())
    writer.bytes_array("same", lambda out: out.write(b"y" * 300))
    assert np.load(tmp_path / "same.npy").tobytes() == b"y" * 300


def test_a_file_map_written_under_three_names_is_read_once_and_stored_once(
        tmp_path: Path) -> None:
    """kNN, graph and semantic each save their community's index, one read-only map: its
    file is read for the first name (not through the map) and the others alias it; the
    same bytes seen as another dtype are a file of their own."""
    source = tmp_path / "spilled.npy"
    np.save(source, np.arange(2_000_000, dtype=np.float32))  # 8 MB
    mapped = np.load(source, mmap_mode="r")

    def read_bytes() -> int:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError("no rchar in /proc/self/io")

    writer = ArtifactWriter(tmp_path / "model")
    before = read_bytes()
    for name in ("knn/features", "graph/features", "semantic/features"):
        writer.array(name, mapped)
    assert read_bytes() - before < 1.5 * mapped.nbytes
    writer.array("other/bytes", mapped.view(np.uint8))
    writer.close({"kind": "test"})
    assert writer.aliases == {"graph/features.npy": "knn/features.npy",
                              "semantic/features.npy": "knn/features.npy"}
    assert (tmp_path / "model" / "knn" / "features.npy").read_bytes() == source.read_bytes()
    reader = ArtifactReader(tmp_path / "model")
    np.testing.assert_array_equal(reader.array("semantic/features"), mapped)
    np.testing.assert_array_equal(reader.array("other/bytes"), mapped.view(np.uint8))
