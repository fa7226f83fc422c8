"""Features computed once per image content, kept on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from services.vision.model import VisionModel
from services.vision.store import FeatureStore


def test_features_are_computed_once_and_read_back(tmp_path: Path, data_dir: Path) -> None:
    photos = sorted((data_dir / "food" / "images").glob("*.jpg"))[:6]
    store = FeatureStore(tmp_path, VisionModel(device="cpu"))
    first, ok = store.embed_paths(photos, batch_size=4, progress=False)
    assert ok.all()
    assert len(list((store.directory).rglob("*.npz"))) == 6

    # A fresh store over the same folder reads every entry and never loads a model.
    again = FeatureStore(tmp_path)
    second, ok = again.embed_paths(photos, progress=False)
    assert ok.all() and again._model is None
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.probabilities, second.probabilities)


def test_entries_are_keyed_by_content_not_path(tmp_path: Path, data_dir: Path) -> None:
    photo = next((data_dir / "food" / "images").glob("*.jpg"))
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(photo, renamed)
    store = FeatureStore(tmp_path / "store", VisionModel(device="cpu"))
    store.embed_paths([photo], progress=False)
    again = FeatureStore(tmp_path / "store")
    _, ok = again.embed_paths([renamed], progress=False)
    assert ok.all() and again._model is None


def test_unreadable_and_corrupt_images_are_skipped_and_counted(tmp_path: Path, data_dir: Path,
                                                               caplog) -> None:
    good = sorted((data_dir / "food" / "images").glob("*.jpg"))[:2]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = tmp_path / "missing.jpg"
    store = FeatureStore(tmp_path / "store", VisionModel(device="cpu"))
    embedding, ok = store.embed_paths([good[0], corrupt, missing, good[1]], progress=False)
    assert ok.tolist() == [True, False, False, True]
    assert not embedding.features[1].any() and embedding.features[3].any()
    assert "2 of 4 images skipped" in caplog.text
