"""Admission control: under load an answer is whole or refused fast, never degraded.

A service that takes every call queues past what it can finish in time: its backends'
deadlines expire and the answers come back without their evidence. ``Admission`` bounds
the calls a service works on at once; the one past the bound is refused at once with
RESOURCE_EXHAUSTED and a retry hint (``retry-after-ms`` in the trailing metadata; the HTTP
gateway turns it into 429 with Retry-After), so the admitted ones keep their latency and
the refused client knows when to come back.

Admitted, shed and in-flight calls, and the items waiting in the service's batchers, are
Prometheus metrics on the server's registry.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.batching import OverloadedError

#: the trailing metadata key of the retry hint, in milliseconds
RETRY_AFTER_KEY = "retry-after-ms"


async def abort_overloaded(context: grpc.aio.ServicerContext, error: OverloadedError) -> None:
    """RESOURCE_EXHAUSTED with ``error``'s retry hint in the trailing metadata."""
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error),
                        ((RETRY_AFTER_KEY, str(math.ceil(error.retry_after * 1000))),))


def retry_after_seconds(error: grpc.aio.AioRpcError) -> float | None:
    """The retry hint of a refusal by ``abort_overloaded``, or None (another error)."""
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            try:
                return int(value) / 1000
            except ValueError:
                return None
    return None


class Admission:
    """At most ``limit`` calls at once; the rest refused with a retry hint of about one
    admitted call's time (its moving average), at least ``min_retry`` seconds."""

    def __init__(self, what: str, limit: int, registry: CollectorRegistry | None = None,
                 queued: Callable[[], float] | None = None, min_retry: float = 0.1) -> None:
        if limit < 1:
            raise ValueError(f"{what}: the admission limit must be at least 1, got {limit}")
        self.what, self.limit, self.min_retry = what, limit, min_retry
        self.in_flight = 0
        self.admitted = self.shed = 0
        self._seconds = 0.0  # moving average of an admitted call's time
        registry = registry or CollectorRegistry()
        self._admitted = Counter("hashrec_admitted", "calls admitted", registry=registry)
        self._shed = Counter("hashrec_shed", "calls refused at capacity (RESOURCE_EXHAUSTED)",
                             registry=registry)
        Gauge("hashrec_admitted_in_flight", "admitted calls being worked on",
              registry=registry).set_function(lambda: self.in_flight)
        if queued is not None:
            Gauge("hashrec_queued", "items waiting in the service's batchers",
                  registry=registry).set_function(queued)

    def retry_after(self) -> float:
        return max(self.min_retry, round(self._seconds or self.min_retry, 1))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Holds one of the ``limit`` places for the block; ``OverloadedError`` when none is
        free."""
        if self.in_flight >= self.limit:
            self.shed += 1
            self._shed.inc()
            raise OverloadedError(self.what, self.retry_after())
        self.in_flight += 1
        self.admitted += 1
        self._admitted.inc()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.in_flight -= 1
            elapsed = time.perf_counter() - started
            self._seconds = elapsed if not self._seconds else 0.9 * self._seconds \
                + 0.1 * elapsed
