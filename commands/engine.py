"""Where the offline pipeline's work runs: in this process, or on a Ray cluster.

Training has two kinds of work that spread over machines. Feature extraction is batch
inference: ``Engine.embed`` runs it as Ray Data ``map_batches`` over a pool of vision-model
actors (a GPU each when the cluster has GPUs), writing into the content-addressed feature
store, so a photo already there is never computed again. Per-method training is a set of
independent fits: ``Engine.map`` runs them as Ray tasks. Both engines compute the same
numbers in the same order, so the artifact comes out the same (tests/test_engine.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.vision.model import Embedding
from services.vision.store import FeatureStore

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
#: photos a vision actor embeds at once (the local store's batch too)
EMBED_BATCH = 32


class Engine(Protocol):
    name: str

    def embed(self, store: FeatureStore, paths: Sequence[Path],
              progress: bool = True) -> tuple[Embedding, np.ndarray]:
        """Features of every image and a mask of those that decoded (FeatureStore's)."""

    def map(self, function: Callable[..., Any], items: Sequence[Any],
            **shared: Any) -> list[Any]:
        """[function(item, **shared) for item in items], in order."""


class LocalEngine:
    """Everything in this process, one item after another."""

    name = "local"

    def embed(self, store: FeatureStore, paths: Sequence[Path],
              progress: bool = True) -> tuple[Embedding, np.ndarray]:
        return store.embed_paths(paths, batch_size=EMBED_BATCH, progress=progress)

    def map(self, function: Callable[..., Any], items: Sequence[Any],
            **shared: Any) -> list[Any]:
        return [function(item, **shared) for item in items]


class _EmbedBatch:
    """A Ray Data actor: one vision model, kept loaded across batches; each batch's
    features go into the shared feature store."""

    def __init__(self, directory: str, backbone: Any) -> None:
        self.store = FeatureStore(Path(directory), backbone=backbone)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, ok = self.store.embed_paths([Path(p) for p in batch["path"]],
                                       batch_size=EMBED_BATCH, progress=False)
        return {"path": batch["path"], "ok": ok}


class RayEngine:
    """Ray: a local Ray started in this process, or the cluster at ``address`` (for
    example KubeRay's head, ray://host:10001). ``workers``: the vision actors and the
    CPUs of the local Ray (default: every CPU)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise SystemExit("--engine ray needs Ray: pip install 'hashrec[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            if address:  # a cluster's image has hashrec installed (docs/scaling.md)
                ray.init(address=address, log_to_driver=False)
            else:
                # the local workers import this checkout's packages, as the driver does
                here = str(Path(__file__).resolve().parents[1])
                path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
        resources = ray.cluster_resources()
        self.cpus = int(resources.get("CPU", 1))
        self.gpus = int(resources.get("GPU", 0))
        self.workers = workers or (self.gpus or self.cpus)
        log.info("ray: %d CPUs, %d GPUs, %d vision actors", self.cpus, self.gpus,
                 self.workers)

    def embed(self, store: FeatureStore, paths: Sequence[Path],
              progress: bool = True) -> tuple[Embedding, np.ndarray]:
        missing = store.missing(paths)
        if missing:
            log.info("ray: embedding %d of %d photos on %d actors", len(missing),
                     len(paths), self.workers)
            dataset = self.ray.data.from_items([{"path": str(p)} for p in missing])
            # one CPU an actor: the vision model's threads stay within its share
            actors = dataset.map_batches(
                _EmbedBatch, batch_size=EMBED_BATCH,
                compute=self.ray.data.ActorPoolStrategy(size=self.workers),
                fn_constructor_args=(str(store.directory.parent), store.backbone),
                num_gpus=1 if self.gpus else 0, num_cpus=0 if self.gpus else 1)
            done = sum(int(batch["ok"].sum()) for batch in actors.iter_batches(
                batch_size=None, batch_format="numpy"))
            log.info("ray: %d photos embedded", done)
        # everything that decodes is in the store now: this reads it back, in order
        return store.embed_paths(paths, batch_size=EMBED_BATCH, progress=False)

    def map(self, function: Callable[..., Any], items: Sequence[Any],
            **shared: Any) -> list[Any]:
        ray = self.ray
        # the large shared inputs (the photo set, the text resources) go to the object
        # store once, not once a task
        refs = {name: ray.put(value) for name, value in shared.items()}
        task = ray.remote(_call).options(num_cpus=1)
        return ray.get([task.remote(function, item, **refs) for item in items])

    def close(self) -> None:
        self.ray.shutdown()


def _call(function: Callable[..., Any], item: Any, **shared: Any) -> Any:
    return function(item, **shared)


def make_engine(name: str = "local", address: str | None = None,
                workers: int | None = None) -> Engine:
    if name == "local":
        if address:
            raise SystemExit("--address goes with --engine ray")
        return LocalEngine()
    if name == "ray":
        return RayEngine(address, workers)
    raise SystemExit(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
