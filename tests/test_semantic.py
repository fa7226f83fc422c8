"""The semantic method's fit (services/word/semantic.py) at sizes its regression must not
follow."""

from __future__ import annotations

import hashlib

import numpy as np

from services.word.semantic import SemanticMethod, TextResources
from shared.photos import PhotoSet


def _embedded(texts: list[str]) -> np.ndarray:
    """A unit vector a text, the same each time (its sha256 seeds it)."""
    rows = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            .normal(size=16) for t in texts]
    rows = np.array(rows, dtype=np.float32).reshape(len(texts), 16)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def test_the_semantic_weights_are_fit_on_the_fit_sample_and_every_photo_is_indexed(
        monkeypatch) -> None:
    """a, b, c, d are a regression over 3 × photos × V inputs: above HASHREC_FIT_SAMPLE
    photos it sees that many (seeded), while every photo still joins the neighbours'
    index and hashtags; up to it, every photo (the shipped model as measured)."""
    rng = np.random.default_rng(0)
    n, vocab = 300, [f"tag{i}" for i in range(20)]
    classes = rng.integers(0, 4, n)
    photos = PhotoSet(rng.normal(size=(n, 12)).astype(np.float32) + classes[:, None],
                      np.eye(4, dtype=np.float32)[classes] * 0.9 + 0.025,
                      [[int(c) * 5 + int(rng.integers(5))] for c in classes])
    text = TextResources(_embedded, lambda tag: tag, {"outside": 12}, 40)
    seen = []
    fit_weights = SemanticMethod._fit_weights

    def spied(label_part, neighbour_part, prior, hashtags):
        seen.append((len(label_part), len(hashtags)))
        return fit_weights(label_part, neighbour_part, prior, hashtags)

    monkeypatch.setattr(SemanticMethod, "_fit_weights", staticmethod(spied))
    monkeypatch.setenv("HASHREC_FIT_SAMPLE", "100")
    sampled = SemanticMethod(("a", "b", "c", "d"), text, neighbours=5)
    sampled.fit(photos, vocab)
    monkeypatch.setenv("HASHREC_FIT_SAMPLE", "1000")
    whole = SemanticMethod(("a", "b", "c", "d"), text, neighbours=5)
    whole.fit(photos, vocab)
    assert seen == [(100, 100), (300, 300)]
    assert sampled.visual_index.size == sampled.train_tags.shape[0] == n
    assert np.isfinite(sampled.weights).all() and sampled.scores(photos).shape == (n, 20)
