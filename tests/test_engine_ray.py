"""Training on Ray gives the artifact the local engine gives, its feature extraction
computes only photos the store has not seen, and its tasks read the driver's fit settings.
A file of its own: Ray's start and its actors' are the suite's longest set-up, and beside
tests/test_engine.py on another test worker they no longer queue behind each other."""

from __future__ import annotations

import os

import numpy as np
import pytest

from commands.engine import LocalEngine, RayEngine
from tests.training import ENGINE_SLICE, manifest, trained_slice


@pytest.fixture(scope="module")
def ray_engine():
    engine = RayEngine(workers=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def both_trained(tmp_path_factory: pytest.TempPathFactory, food_posts, ray_engine):
    """The same slice trained in this process and on Ray."""
    return {key: trained_slice(food_posts, tmp_path_factory.mktemp(key), engine)
            for key, engine in (("local", LocalEngine()), ("ray", ray_engine))}


def test_ray_writes_the_local_engines_artifact_byte_for_byte(both_trained):
    (local, _), (ray, _) = both_trained["local"], both_trained["ray"]
    local_files, ray_files = manifest(local)["files"], manifest(ray)["files"]
    assert len(local_files) > 20  # every method's arrays, the fusions, the vocabulary
    assert ray_files == local_files  # sha256 of every file
    # the version's content hash (after the time stamp) names the same data
    assert ray.version.rsplit("-", 1)[1] == local.version.rsplit("-", 1)[1]


def test_ray_and_local_feature_stores_hold_the_same_features(both_trained, food_posts):
    (_, local_store), (_, ray_store) = both_trained["local"], both_trained["ray"]
    paths = [p.image for p in food_posts[:ENGINE_SLICE] if p.image is not None]
    local, local_ok = local_store.embed_paths(paths, progress=False)
    ray, ray_ok = ray_store.embed_paths(paths, progress=False)
    assert local_ok.all() and (ray_ok == local_ok).all()
    assert np.array_equal(ray.features, local.features)
    assert np.array_equal(ray.probabilities, local.probabilities)


def test_ray_embeds_only_the_photos_the_store_lacks(both_trained, food_posts, ray_engine):
    _, store = both_trained["ray"]
    paths = [p.image for p in food_posts[:ENGINE_SLICE + 10] if p.image is not None]
    before = {path: path.stat().st_mtime_ns for path in store.directory.rglob("*.npz")}
    new = store.missing(paths)
    assert len(new) == len(paths) - ENGINE_SLICE == 10
    embedding, ok = ray_engine.embed(store, paths, progress=False)
    after = {path: path.stat().st_mtime_ns for path in store.directory.rglob("*.npz")}
    assert ok.all() and len(embedding.features) == len(paths)
    assert len(after) == len(before) + 10
    assert all(after[path] == stamp for path, stamp in before.items())  # none recomputed
    assert store.missing(paths) == []


def test_ray_tasks_read_the_fit_settings_the_driver_has_at_the_call(ray_engine,
                                                                      monkeypatch):
    """Ray's workers start with Ray's environment: a fit setting changed after (the index
    kind, the fit's passes) reaches them with each call, a path does not. (os.getenv runs
    as the task: a worker that unpickles it imports nothing of ours.)"""
    names = ["HASHREC_FIT_PASSES", "HASHREC_INDEX_EXACT_MAX", "HASHREC_MODELS"]
    monkeypatch.setenv("HASHREC_FIT_PASSES", "3")
    monkeypatch.setenv("HASHREC_INDEX_EXACT_MAX", "50")
    monkeypatch.setenv("HASHREC_MODELS", "/the/drivers/own/models")
    assert list(ray_engine.map(os.getenv, names)) == ["3", "50", None]
    monkeypatch.setenv("HASHREC_FIT_PASSES", "4")
    assert list(ray_engine.map(os.getenv, names[:1])) == ["4"]
