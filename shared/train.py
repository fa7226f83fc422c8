"""Training the photo → hashtag models once and loading them for serving.

``train_image_models`` fits every method on the training photos, fits the fusion weights
on out-of-fold scores, and writes one versioned, checksummed artifact directory (plain
arrays and JSON: shared/artifacts.py). ``load_image_models`` verifies it and rebuilds the
methods without retraining and without unpickling anything.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.graph.model import JointGraphMethod
from services.recommender.model import FrequencyMethod, Fusion, KnnMethod, Method, MlpMethod
from services.vision.model import class_names
from services.vision.store import MODEL_ID, FeatureStore
from services.word.autorec import AutoRecMethod
from services.word.model import InstaHashMethod
from services.word.semantic import SemanticMethod, TextResources
from shared.artifacts import ArtifactReader, ArtifactWriter
from shared.data.readers import Post
from shared.eval.image2tag import METHODS, fit_fusion, make_methods, training_photos
from shared.photos import PhotoSet

log = logging.getLogger(__name__)
KIND = "image-to-hashtag"


def train_image_models(posts: Sequence[Post], store: FeatureStore, out: Path,
                       ignore: frozenset[str] = frozenset(), methods: Sequence[str] = METHODS,
                       min_count: int = 3, max_vocab: int = 1000, seed: int = 0,
                       folds: int = 5, progress: bool = True,
                       text: TextResources | None = None) -> ImageModels:
    """Fits and writes everything under ``out/<version>/``; returns the fitted models (their
    ``directory`` is where they were written)."""
    started = time.perf_counter()
    train, vocab = training_photos(posts, store, ignore, min_count, max_vocab, progress)
    fusion = fit_fusion(train, vocab.terms, methods, folds, seed, text)
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha256(
        "\n".join(vocab.terms).encode() + train.features.tobytes()).hexdigest()[:8]
    writer = ArtifactWriter(out / version)
    fitted = {}
    for method in make_methods(methods, seed, text):
        method.fit(train, vocab.terms)
        method.save(writer)
        fitted[method.name] = method
    fusion.save(writer)
    writer.json("vocabulary", list(vocab.terms))
    writer.close({"kind": KIND, "version": version, "methods": list(methods),
                  "vision_model": MODEL_ID, "ignored": sorted(ignore), "n_train": len(train),
                  "seed": seed})
    log.info("trained %s on %d photos in %.0f s -> %s", list(methods), len(train),
             time.perf_counter() - started, out / version)
    return ImageModels(version, vocab.terms, fitted, fusion, out / version)


def train_from_spec(spec: str, out: Path, ignore: frozenset[str] = frozenset(),
                    min_count: int = 3, seed: int = 0) -> ImageModels:
    """Reads and normalises a data set (FORMAT:PATH), then ``train_image_models`` with the
    shared feature store under $HASHREC_MODELS/features."""
    from shared.config import models_dir
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    return train_image_models(normalize_post_hashtags(read_posts(spec)),
                              FeatureStore(models_dir() / "features"), out, ignore,
                              min_count=min_count, seed=seed)


@dataclass
class ImageModels:
    version: str
    vocabulary: tuple[str, ...]
    methods: dict[str, Method]
    fusion: Fusion
    directory: Path | None = None

    def scores(self, photos: PhotoSet) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(fused scores, each method's scores), one row per photo, one column per hashtag."""
        per_method = {name: method.scores(photos) for name, method in self.methods.items()}
        return self.fusion.combine(per_method), per_method


def _open(directory: Path) -> ArtifactReader:
    reader = ArtifactReader(directory)  # refuses a directory whose checksums do not match
    manifest = reader.manifest
    if manifest.get("kind") != KIND:
        raise ValueError(f"{directory}: not an {KIND} model directory")
    if manifest["vision_model"] != MODEL_ID:
        raise ValueError(f"{directory}: trained on features of {manifest['vision_model']}, "
                         f"this vision model is {MODEL_ID}")
    return reader


def _load(reader: ArtifactReader, name: str) -> Method:
    loaders = {"frequency": FrequencyMethod.load, "knn": KnnMethod.load,
               "mlp": MlpMethod.load,
               "word": lambda r: InstaHashMethod.load(r, class_names()),
               "graph": lambda r: JointGraphMethod.load(r, class_names()),
               "autorec": lambda r: AutoRecMethod.load(r, class_names(), "autorec"),
               "instahash": lambda r: AutoRecMethod.load(r, class_names(), "instahash"),
               "autorec_masked": lambda r: AutoRecMethod.load(r, class_names(),
                                                              "autorec_masked"),
               "semantic": lambda r: SemanticMethod.load(r, class_names())}
    if name not in reader.manifest["methods"]:
        raise ValueError(f"{reader.directory}: has no {name!r} method "
                         f"(it holds {reader.manifest['methods']})")
    return loaders[name](reader)


def load_image_models(directory: Path, methods: Sequence[str] | None = None) -> ImageModels:
    """The verified models of a `hashrec train` directory; ``methods``: only these (the
    recommender leaves word and graph to their own services)."""
    reader = _open(directory)
    manifest = reader.manifest
    names = manifest["methods"] if methods is None else methods
    return ImageModels(manifest["version"], tuple(reader.json("vocabulary")),
                       {name: _load(reader, name) for name in names}, Fusion.load(reader),
                       directory)
