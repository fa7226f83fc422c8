"""The engine the tests' fixtures train with: `hashrec train`'s default, a pool of one
process a usable core (loky's workers start once and serve every fit of the session).
Under pytest-xdist too: a worker's pool fills the core the other worker leaves idle while
it waits on a serve tree (a pool of one a worker measured slower, 415 s against 386-394 s
on a clean clone). tests/test_engine.py checks that it writes the serial engine's bytes."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from commands.engine import Engine, LocalEngine

if TYPE_CHECKING:
    from services.image_models import ImageModels
    from services.vision.store import FeatureStore


@cache
def pool() -> LocalEngine:
    from shared.batching import usable_cores

    return LocalEngine(usable_cores())


#: the real slice the engine tests train on: the food set's first photos
ENGINE_SLICE = 100


def trained_slice(posts: list, root: Path, engine: Engine) -> tuple[ImageModels, FeatureStore]:
    """The food set's first ``ENGINE_SLICE`` photos trained on ``engine`` with a feature
    store of its own (so the engine computes the features too), every default method,
    three folds: what tests/test_engine*.py compare between engines."""
    from commands.train import train_image_models
    from services.vision.store import FeatureStore

    store = FeatureStore(root / "features")
    models = train_image_models(posts[:ENGINE_SLICE], store, root / "models",
                                ignore=frozenset({"food"}), min_count=2, folds=3,
                                progress=False, engine=engine)
    return models, store


def manifest(models: ImageModels) -> dict:
    """The written model's manifest.json (files and their sha256, the recipe)."""
    import json

    return json.loads((models.directory / "manifest.json").read_text())
