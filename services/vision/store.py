"""A feature store: each image's features computed once, keyed by the sha256 of its bytes.

Entries live under ``DIR/<model id>/<sha[:2]>/<sha>.npz`` (plain arrays, no pickle), so a
renamed or copied photo is not recomputed and a new vision model never reads old entries.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.vision.model import (
    FEATURE_DIM,
    N_CLASSES,
    Backbone,
    Embedding,
    ImageError,
    VisionModel,
    configured_backbone,
    decode_image,
    preprocess,
)

log = logging.getLogger(__name__)


class FeatureStore:
    """Features of one backbone: the model's, else the given one, else $HASHREC_BACKBONE's."""

    def __init__(self, directory: Path, model: VisionModel | None = None,
                 backbone: Backbone | None = None) -> None:
        self.backbone = model.backbone if model is not None else (
            backbone or configured_backbone())
        self.directory = directory / self.backbone.id
        self._model = model

    @property
    def model(self) -> VisionModel:
        if self._model is None:  # loaded only when something is not cached yet
            self._model = VisionModel(backbone=self.backbone)
        return self._model

    def _entry(self, digest: str) -> Path:
        return self.directory / digest[:2] / f"{digest}.npz"

    def save(self, digest: str, features: np.ndarray, probabilities: np.ndarray) -> None:
        """The entry of the photo whose bytes have this sha256 (atomically)."""
        path = self._entry(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, features=features, probabilities=probabilities)
        partial.replace(path)  # atomic: a reader never sees half an entry

    def missing(self, paths: Sequence[Path]) -> list[Path]:
        """The readable paths whose bytes have no entry yet (what a run must compute)."""
        missing = []
        for path in paths:
            try:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                continue
            if not self._entry(digest).is_file():
                missing.append(path)
        return missing

    def embed_paths(self, paths: Sequence[Path], batch_size: int = 32,
                    progress: bool = True) -> tuple[Embedding, np.ndarray]:
        """Features of every image and a mask of those that decoded; the others (unreadable
        or not an image) are zero rows, counted in the log with their reasons."""
        features = np.zeros((len(paths), FEATURE_DIM), dtype=np.float32)
        probabilities = np.zeros((len(paths), N_CLASSES), dtype=np.float32)
        ok = np.zeros(len(paths), dtype=bool)
        pending: list[tuple[int, str, object]] = []
        failures: Counter[str] = Counter()

        def flush() -> None:
            if not pending:
                return
            import torch

            batch = torch.stack([tensor for _, _, tensor in pending])
            # Always a full batch (the last one padded with zeros): the backbone's kernels
            # depend on the batch's shape, so a photo's features would otherwise depend on
            # how many photos shared its batch, and two runs that group photos differently
            # (a re-run, Ray's actors) would store different bits for the same photo.
            padded = torch.cat([batch, batch.new_zeros((batch_size - len(batch),
                                                        *batch.shape[1:]))])
            result = self.model.embed_tensors(padded)
            for (row, digest, _), feature, probability in zip(
                    pending, result.features, result.probabilities, strict=False):
                features[row], probabilities[row], ok[row] = feature, probability, True
                self.save(digest, feature, probability)
            pending.clear()

        for row, path in enumerate(tqdm(paths, desc="image features", unit="img",
                                        disable=not progress)):
            try:
                data = Path(path).read_bytes()
            except OSError as error:
                failures[f"unreadable: {error.strerror}"] += 1
                continue
            digest = hashlib.sha256(data).hexdigest()
            entry = self._entry(digest)
            if entry.is_file():
                with np.load(entry, allow_pickle=False) as cached:
                    features[row], probabilities[row] = cached["features"], cached["probabilities"]
                ok[row] = True
                continue
            try:
                pending.append((row, digest,
                                preprocess(decode_image(data), self.backbone.image_size)))
            except ImageError as error:
                failures[str(error)] += 1
                continue
            if len(pending) == batch_size:
                flush()
        flush()
        if failures:
            log.warning("feature store: %d of %d images skipped: %s", failures.total(),
                        len(paths), dict(failures))
        return Embedding(features, probabilities), ok
