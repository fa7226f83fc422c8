"""Batching the numeric work of concurrent requests, on threads the service owns.

Every scoring service answers one photo a call, but the work is matrix products whose cost
hardly grows with the number of rows: 64 calls scored one at a time cost about 64 times
what one batch of 64 costs. A ``Batcher`` collects the items of concurrent calls and hands
them to one function as a list. A batch closes when it holds ``max_batch`` items, or
``max_delay`` seconds after its first item arrived with nothing else waiting; while a batch
runs, new items queue up and form the next one, so under load the batches grow by
themselves and at rest an item waits at most ``max_delay``.

The batches run on a ``NumericWorker``: one thread, the only one in the process that does
numeric work, so BLAS, OpenMP and torch threads (``limit_numeric_threads``) are never
multiplied by a pool of request threads fighting over the same cores.

A batcher bounds what it holds: past ``max_queued`` items waiting, ``submit`` raises
``OverloadedError`` at once (the service answers RESOURCE_EXHAUSTED) rather than queueing a
call that would outlive its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

from shared.config import env_number

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: the CPU allowance a service's numeric work may use; default: the cores it may run on
THREADS_ENV = "HASHREC_THREADS"
#: how long a batch waits for more items once nothing else is queued
DELAY_ENV, DEFAULT_DELAY_MS = "HASHREC_BATCH_DELAY_MS", 2.0


class OverloadedError(Exception):
    """More work is waiting than a service admits; ``retry_after`` seconds is a fair wait
    before trying again."""

    def __init__(self, what: str, retry_after: float) -> None:
        super().__init__(f"{what} is at capacity; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's limit) when one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def service_threads() -> int:
    """HASHREC_THREADS, else the usable cores."""
    configured = os.environ.get(THREADS_ENV, "").strip()
    if not configured:
        return usable_cores()
    try:
        threads = int(configured)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a whole number of threads, got "
                         f"{configured!r}") from None
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be at least 1, got {threads}")
    return threads


def limit_numeric_threads(threads: int | None = None) -> dict[str, int]:
    """Caps every numeric library's thread pool at ``threads`` (default
    ``service_threads()``): BLAS and OpenMP (threadpoolctl), torch (intra- and inter-op)
    and FAISS. Returns what each now runs, for the service's start-up log. torch only
    where the service has loaded it: the word, graph and recommender services score in
    numpy and never import it (0.9 s and ~150 MB a process)."""
    import threadpoolctl

    with contextlib.suppress(ImportError):  # loaded first, so its OpenMP and BLAS are capped
        import faiss
    threads = threads or service_threads()
    # OpenMP's thread count belongs to the calling thread: NumericWorker calls this from
    # its own thread, where the work runs
    threadpoolctl.threadpool_limits(threads)
    running = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
        # once per process (a second service in the same process finds it set); the
        # worker is the one caller
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        running["torch"] = torch.get_num_threads()
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
        running["faiss"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    for pool in threadpoolctl.threadpool_info():
        running[f"{pool['internal_api']}"] = pool["num_threads"]
    return running


class NumericWorker:
    """The one thread a service runs its numeric work on (batches, model loads in
    between). Batchers of one service share it, so their batches never run at once."""

    def __init__(self, name: str) -> None:
        # the caps set in this thread itself: an OpenMP setting made in another thread
        # (the event loop's, at start-up) does not reach it
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                           initializer=limit_numeric_threads)

    async def run(self, work: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class Batcher(Generic[T, R]):
    """Collects the items of concurrent calls into batches for ``run`` (a list of items →
    one result per item, in order), run on ``worker``."""

    def __init__(self, name: str, run: Callable[[list[T]], Sequence[R]],
                 worker: NumericWorker, max_batch: int = 64, max_delay: float | None = None,
                 max_queued: int = 1024) -> None:
        """``max_delay``: default HASHREC_BATCH_DELAY_MS (DEFAULT_DELAY_MS) milliseconds."""
        if max_delay is None:
            max_delay = env_number(DELAY_ENV, DEFAULT_DELAY_MS) / 1000
        if max_batch < 1 or max_queued < 1:
            raise ValueError(f"{name}: max_batch and max_queued must be at least 1")
        self.name, self.run, self.worker = name, run, worker
        self.max_batch, self.max_delay, self.max_queued = max_batch, max_delay, max_queued
        self.queue: asyncio.Queue[tuple[T, asyncio.Future]] = asyncio.Queue()
        self.batches = 0  # batches run: for tests and metrics
        self.items = 0  # items they held
        self.seconds = 0.0  # time spent running them
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return self.queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        """Ends the batches; a caller still waiting hears so rather than waiting on."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        while not self.queue.empty():
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError(f"{self.name} stopped"))

    def retry_after(self) -> float:
        """How long the work queued now takes, from the batches run so far (≥ 0.1 s)."""
        per_item = self.seconds / self.items if self.items else 0.01
        return max(0.1, round(per_item * (self.queued + 1), 1))

    async def submit(self, item: T) -> R:
        """The item's result, once its batch has run; ``OverloadedError`` at once when
        ``max_queued`` items already wait."""
        if self.queue.qsize() >= self.max_queued:
            raise OverloadedError(self.name, self.retry_after())
        self.start()
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_delay
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            # A caller that has gone (deadline, cancel) costs the batch nothing.
            batch = [(item, future) for item, future in batch if not future.done()]
            if not batch:
                continue
            items = [item for item, _ in batch]
            started = loop.time()
            try:
                results = await self.worker.run(lambda items=items: self._checked(items))
            except Exception as error:
                log.exception("%s: a batch of %d failed", self.name, len(items))
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(error)
                else:  # one bad item must not fail the calls batched with it: each alone
                    await self._one_by_one(batch)
                continue
            self.batches += 1
            self.items += len(items)
            self.seconds += loop.time() - started
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _checked(self, items: list[T]) -> Sequence[R]:
        results = self.run(items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
        return results

    async def _one_by_one(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        for item, future in batch:
            if future.done():
                continue
            try:
                result = (await self.worker.run(lambda item=item: self._checked([item])))[0]
            except Exception as error:
                if not future.done():
                    future.set_exception(error)
                continue
            self.batches += 1
            self.items += 1
            if not future.done():
                future.set_result(result)
