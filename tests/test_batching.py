"""shared/batching.py and shared/admission.py on their own: batches form from concurrent
calls, bounded queues refuse at once, failures reach every caller, thread settings are
checked."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shared.admission import Admission
from shared.batching import (
    Batcher,
    NumericWorker,
    OverloadedError,
    limit_numeric_threads,
    service_threads,
)


def _run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_items_reach_the_function_as_few_batches_in_order() -> None:
    seen: list[list[int]] = []
    threads: set[str] = set()

    def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        threads.add(threading.current_thread().name)
        return [2 * item for item in items]

    async def main() -> list[int]:
        worker = NumericWorker("test-worker")
        batcher = Batcher("doubling", double, worker, max_batch=16, max_delay=0.05)
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        finally:
            batcher.stop()
            worker.stop()

    assert _run(main()) == [2 * i for i in range(40)]
    assert len(seen) < 40 and max(len(batch) for batch in seen) == 16
    assert sorted(i for batch in seen for i in batch) == list(range(40))
    assert len(threads) == 1 and next(iter(threads)).startswith("test-worker")


def test_a_full_queue_refuses_at_once_with_a_retry_hint() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(10)
        return items

    async def main() -> tuple[list, OverloadedError]:
        worker = NumericWorker("test-worker")
        batcher = Batcher("slow", slow, worker, max_batch=1, max_delay=0, max_queued=2)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the first batch is running and holds the worker
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        try:
            await batcher.submit(3)
        except OverloadedError as error:
            refused = error
        release.set()
        done = await asyncio.gather(first, *waiting)
        batcher.stop()
        worker.stop()
        return done, refused

    done, refused = _run(main())
    assert done == [0, 1, 2]
    assert refused.retry_after >= 0.1 and "slow is at capacity" in str(refused)


def test_a_bad_item_fails_only_its_own_call_and_the_next_batch_runs() -> None:
    def picky(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("thirteen")
        return items

    async def main() -> tuple[list, list]:
        worker = NumericWorker("test-worker")
        batcher = Batcher("picky", picky, worker, max_batch=8, max_delay=0.05)
        mixed = await asyncio.gather(*(batcher.submit(i) for i in (12, 13, 14)),
                                     return_exceptions=True)
        fine = await asyncio.gather(*(batcher.submit(i) for i in (1, 2)))
        batcher.stop()
        worker.stop()
        return mixed, fine

    mixed, fine = _run(main())
    assert mixed[0] == 12 and mixed[2] == 14
    assert isinstance(mixed[1], ValueError) and "thirteen" in str(mixed[1])
    assert fine == [1, 2]


def test_admission_refuses_past_its_limit_and_counts_both() -> None:
    admission = Admission("the test", limit=2)
    with admission.slot(), admission.slot(), pytest.raises(
            OverloadedError, match="the test is at capacity"), admission.slot():
        pass
    with admission.slot():  # places come back
        pass
    assert (admission.admitted, admission.shed, admission.in_flight) == (3, 1, 0)


def test_thread_settings_come_from_the_environment_and_bad_ones_are_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # a service that runs torch (vision, user) has loaded it

    monkeypatch.setenv("HASHREC_THREADS", "1")
    assert service_threads() == 1
    running = limit_numeric_threads()
    assert torch.get_num_threads() == 1
    assert running["torch"] == 1 and running.get("faiss", 1) == 1
    assert all(count == 1 for count in running.values())
    # and in the worker thread that runs the batches, where OpenMP's own setting lives
    async def worker_pools() -> list[int]:
        import threadpoolctl

        worker = NumericWorker("test-worker")
        try:
            return await worker.run(
                lambda: [pool["num_threads"] for pool in threadpoolctl.threadpool_info()])
        finally:
            worker.stop()

    assert set(_run(worker_pools())) == {1}
    monkeypatch.setenv("HASHREC_THREADS", "many")
    with pytest.raises(ValueError, match="HASHREC_THREADS must be a whole number"):
        service_threads()
    monkeypatch.setenv("HASHREC_THREADS", "0")
    with pytest.raises(ValueError, match="HASHREC_THREADS must be at least 1"):
        service_threads()
    monkeypatch.delenv("HASHREC_THREADS")
    assert service_threads() >= 1
    limit_numeric_threads()  # back to the machine's cores for the rest of the session
