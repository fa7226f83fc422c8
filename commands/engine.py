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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.vision.model import FEATURE_DIM, N_CLASSES, Embedding
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
            progress: str | None = None, **shared: Any) -> Iterator[Any]:
        """function(item, **shared) for each item, yielded in order as they finish (the
        rest keep running while the caller works on the first); ``progress``: a bar of
        that name counts the finished items."""


class LocalEngine:
    """This machine: feature extraction in this process; the independent fits one after
    another (``workers`` 1, the default), or side by side in a pool of ``workers``
    processes (loky, joblib's: cloudpickle carries the fit functions and their inputs,
    large arrays are memory-mapped once, not copied a task). Every fit runs on one thread
    (``one_thread``), so the artifact is the same bytes for any number of workers."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise SystemExit(f"--workers must be at least 1, got {workers}")
        self.workers = workers

    def embed(self, store: FeatureStore, paths: Sequence[Path],
              progress: bool = True) -> tuple[Embedding, np.ndarray]:
        return store.embed_paths(paths, batch_size=EMBED_BATCH, progress=progress)

    def map(self, function: Callable[..., Any], items: Sequence[Any],
            progress: str | None = None, **shared: Any) -> Iterator[Any]:
        # one task goes to the pool too: what it loads (a text encoder) stays out of this
        # process, and the pool keeps its size whatever the batch
        workers = self.workers if items else 1
        if workers <= 1:
            results = (function(item, **shared) for item in items)
        else:
            from joblib import Parallel, delayed
            from joblib._parallel_backends import LokyBackend

            log.info("local: %d tasks of %s on %d processes", len(items), function.__name__,
                     workers)
            # one task a dispatch: the fits last seconds to a minute, and a batch of two
            # would hold a short fit behind a long one on the same worker. Each worker ends
            # with this process: a SIGKILLed driver left them fitting, then idle with their
            # memory, for as long as nobody killed them (an outside try)
            backend = LokyBackend(initializer=_start_worker, initargs=(
                os.getpid(), tuple(sorted((k, v) for k, v in os.environ.items()
                                          if k.startswith("HASHREC_")))))
            results = Parallel(n_jobs=workers, backend=backend, batch_size=1,
                               return_as="generator")(
                delayed(function)(item, **shared) for item in items)
        return _counted(results, len(items), progress)


def _bar(total: int, name: str | None):
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="fit", disable=name is None)


def _counted(results: Iterator[Any], total: int, name: str | None) -> Iterator[Any]:
    """``results`` as they arrive, counted on a progress bar called ``name`` (none: no bar)."""
    with _bar(total, name) as bar:
        for result in results:
            yield result
            bar.update(1)


class _EmbedBatch:
    """A Ray Data actor: one feature store, its vision model loaded only once a photo is
    not in the store yet, kept across batches. Each batch's features come back with their
    rows; the new ones are also written into the shared store."""

    def __init__(self, directory: str, backbone: Any) -> None:
        self.store = FeatureStore(Path(directory), backbone=backbone)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embedding, ok = self.store.embed_paths([Path(p) for p in batch["path"]],
                                               batch_size=EMBED_BATCH, progress=False)
        return {"row": batch["row"], "ok": ok, "features": embedding.features,
                "probabilities": embedding.probabilities}


#: the environment a fit reads (shared/config.py, shared/index.py): photo index kind and
#: recall, the fit sample and passes, the text encoder, the vision backbone
FIT_SETTINGS = ("HASHREC_INDEX", "HASHREC_FIT_", "HASHREC_TEXT_ENCODER", "HASHREC_TEXT_MODEL",
                "HASHREC_BACKBONE")


class RayEngine:
    """Ray: a local Ray started in this process, or the cluster at ``address`` (for
    example KubeRay's head, ray://host:10001). ``workers``: the vision actors and the
    CPUs of the local Ray (default: every CPU)."""

    name = "ray"
    #: photos a streamed training embeds in one call: each call starts a Dataset and its
    #: actors, so far more than the local engine's 8,192
    stream_chunk = 1 << 18

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
        """The actors read every photo (the driver reads none): a photo in the store is
        loaded from it, any other embedded and stored."""
        features = np.zeros((len(paths), FEATURE_DIM), dtype=np.float32)
        probabilities = np.zeros((len(paths), N_CLASSES), dtype=np.float32)
        ok = np.zeros(len(paths), dtype=bool)
        if not paths:
            return Embedding(features, probabilities), ok
        log.info("ray: %d photos through %d actors", len(paths), self.workers)
        dataset = self.ray.data.from_items([{"row": row, "path": str(path)}
                                            for row, path in enumerate(paths)])
        # one CPU an actor: the vision model's threads stay within its share
        batches = dataset.map_batches(
            _EmbedBatch, batch_size=EMBED_BATCH,
            compute=self.ray.data.ActorPoolStrategy(size=self.workers),
            fn_constructor_args=(str(store.directory.parent), store.backbone),
            num_gpus=1 if self.gpus else 0, num_cpus=0 if self.gpus else 1)
        for batch in batches.iter_batches(batch_size=None, batch_format="numpy"):
            rows = batch["row"]  # batches arrive in any order; each names its rows
            features[rows], probabilities[rows] = batch["features"], batch["probabilities"]
            ok[rows] = batch["ok"]
        if not ok.all():  # each actor logs its reasons
            log.warning("ray: %d of %d images skipped (unreadable or not an image)",
                        int((~ok).sum()), len(paths))
        return Embedding(features, probabilities), ok

    def map(self, function: Callable[..., Any], items: Sequence[Any],
            progress: str | None = None, **shared: Any) -> Iterator[Any]:
        ray = self.ray
        # the large shared inputs (the photo set, the text resources) go to the object
        # store once, not once a task
        refs = {name: ray.put(_unmapped(value)) for name, value in shared.items()}
        # the driver's settings that decide what a fit computes, as they are at this call
        # (Ray's workers keep the environment Ray was started with; paths, ports and
        # secrets are the cluster's own and stay)
        settings = {name: value for name, value in os.environ.items()
                    if name.startswith(FIT_SETTINGS)}
        task = ray.remote(num_cpus=1)(function)
        if settings:  # a runtime_env of its own starts workers of its own
            task = task.options(runtime_env={"env_vars": settings})
        pending = [task.remote(item, **refs) for item in items]
        return _counted((ray.get(ref) for ref in pending), len(items), progress)

    def close(self) -> None:
        self.ray.shutdown()


def _start_worker(parent: int, settings: tuple[tuple[str, str], ...]) -> None:
    """A pool worker's start: it ends with its driver. ``settings``, the driver's HASHREC_*
    environment when the pool is asked for, only ride along: loky reuses a pool whose
    initializer arguments are the same, and its workers keep the environment they were
    spawned with, so a changed setting (an index kind, the fit sample) must make a new
    pool, whose workers start with it."""
    import signal

    from commands.supervisor import end_with_parent

    end_with_parent(parent)
    # Ctrl-C reaches the terminal's whole process group: the driver says the one line and
    # its workers end with it; an idle worker that took the SIGINT itself printed a
    # 45-line traceback of loky's queue first (an outside try)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _unmapped(value: Any) -> Any:
    """A photo set whose arrays are memory-mapped, as plain array views: numpy pickles an
    np.memmap as bytes (a copy in the driver, another in every task), an ndarray through
    pickle 5's buffers, which Ray shares from its object store."""
    from dataclasses import fields, is_dataclass, replace

    if not is_dataclass(value) or isinstance(value, type):
        return value
    mapped = {f.name: np.asarray(getattr(value, f.name)) for f in fields(value)
              if isinstance(getattr(value, f.name), np.memmap)}
    return replace(value, **mapped) if mapped else value


def make_engine(name: str = "local", address: str | None = None,
                workers: int | None = None) -> Engine:
    if workers is not None and workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {workers}")
    if name == "local":
        if address:
            raise SystemExit("--address goes with --engine ray")
        return LocalEngine(workers or 1)
    if name == "ray":
        return RayEngine(address, workers)
    raise SystemExit(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
