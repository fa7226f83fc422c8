"""Shared fixtures: the real data sets beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import data_root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "mirflickr25k").is_dir():
        raise RuntimeError(f"the shipped data sets are missing at {root}: "
                           "set HASHREC_DATA_ROOT to their folder")
    return root


@pytest.fixture(scope="session")
def feature_store(tmp_path_factory: pytest.TempPathFactory):
    """One real feature store (the CPU vision model) for the session's photo tests."""
    from services.vision.model import VisionModel
    from services.vision.store import FeatureStore

    return FeatureStore(tmp_path_factory.mktemp("features"), VisionModel(device="cpu"))


@pytest.fixture(scope="session")
def mirflickr_labelled(data_dir: Path, feature_store):
    """MIRFlickr's 584 photos with their 24 content labels as the tags to recommend: 400
    train, 184 test. Content labels, unlike most hashtags, are decided by the photo."""

    from shared.data.normalize import Vocabulary
    from shared.data.readers import read_posts
    from shared.photos import PhotoSet

    posts = [p for p in read_posts(f"dcmr:{data_dir / 'mirflickr25k'}")
             if p.image is not None and p.labels]
    embedding, ok = feature_store.embed_paths([p.image for p in posts], progress=False)
    assert ok.all() and len(posts) == 584
    vocab = Vocabulary.build([p.labels for p in posts[:400]])
    ids = [vocab.encode(p.labels) for p in posts]
    train = PhotoSet(embedding.features[:400], embedding.probabilities[:400], ids[:400])
    test = PhotoSet(embedding.features[400:], embedding.probabilities[400:])
    return train, test, [frozenset(i) for i in ids[400:]], vocab
