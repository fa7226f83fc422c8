"""The one gRPC server bootstrap every hashrec service uses.

- grpc.aio server with message size limits on both directions (images travel as bytes);
- the standard health service: NOT_SERVING until ``set_serving(True)`` (the service has
  loaded and verified its models), NOT_SERVING again as soon as shutdown starts, while
  in-flight calls drain for ``grace`` seconds;
- server reflection, so grpcurl and friends can list and call the services;
- SIGTERM / SIGINT start that graceful shutdown;
- Prometheus metrics on ``metrics_port`` (when given): requests by method and status code,
  and a latency histogram by method.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from shared.batching import limit_numeric_threads
from shared.config import env_number
from shared.tracing import server_interceptors

log = logging.getLogger(__name__)

#: An image may be 20 MiB; the rest of a message is small.
MAX_MESSAGE_BYTES = 24 * 1024 * 1024
#: Clients spread calls over every address a target resolves to (round_robin): behind a
#: headless Service, ``dns:///word:50052`` resolves to every word pod, where the default
#: pick_first would pin each client to one pod for the connection's life.
CHANNEL_OPTIONS = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.service_config",
                    json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})))
#: seconds a server keeps a client connection before asking it to reconnect (then a
#: grace for its calls in flight): clients resolve again and find pods an autoscaler
#: added; unset or 0, connections live on
MAX_CONNECTION_AGE_ENV = "HASHREC_MAX_CONNECTION_AGE_S"


#: gRPC turns SO_REUSEPORT on by default: a second server on a taken port would bind it
#: too and split the traffic (two user services, one journal). Off: the bind fails.
NO_REUSEPORT = (("grpc.so_reuseport", 0),)


class StartupError(RuntimeError):
    """A service cannot start (its port or its state is another's): one line says why and
    the process exits 2 (``run_service``)."""


def server_options() -> tuple[tuple[str, object], ...]:
    """CHANNEL_OPTIONS, no port sharing, and the connection age limit from the
    environment."""
    age = env_number(MAX_CONNECTION_AGE_ENV, 0.0)
    if age <= 0:
        return (*CHANNEL_OPTIONS, *NO_REUSEPORT)
    return (*CHANNEL_OPTIONS, *NO_REUSEPORT, ("grpc.max_connection_age_ms", int(age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(age / 2, 5) * 1000)))


def run_service(main: Callable[[], Awaitable[None]], name: str) -> None:
    """``asyncio.run(main())``; a StartupError, a ValueError (a setting that is missing or
    not a number, a model that fails verification) or a FileNotFoundError (a model folder
    that is not there): what the operator must mend ends the process with one line and
    exit 2."""
    async def stopping_what_started() -> None:
        try:
            await main()
        finally:
            # A start that failed (a model refused while the server already listened for
            # health checks) leaves its server running: stopped here, on the loop, not by
            # gRPC's finaliser after the loop closed (a traceback after the one line).
            for server in list(_RUNNING):
                try:
                    await server.stop()
                except Exception as error:  # the error that ended the start is the news
                    log.warning("%s: stopping %s failed: %s", name, server.address, error)

    try:
        asyncio.run(stopping_what_started())
    except (StartupError, ValueError, FileNotFoundError) as error:
        print(f"{name}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

#: TLS, off unless set: a server with a certificate and key serves only TLS; a client
#: with a CA verifies the server against it (files, mounted from Secrets in deploy/)
TLS_CERT_ENV, TLS_KEY_ENV, TLS_CA_ENV = "HASHREC_TLS_CERT", "HASHREC_TLS_KEY", "HASHREC_TLS_CA"
#: with TLS on, a plaintext port that serves the health service alone: the kubelet's
#: native gRPC probes cannot speak TLS (deploy/overlays/tls points them there)
HEALTH_PORT_ENV = "HASHREC_HEALTH_PORT"


#: what gRPC's own connection errors hold: an address, never shown to a client
ADDRESS = re.compile(r"(ipv4|ipv6|unix|dns):|\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]|"
                     r"failed to connect|connection refused", re.IGNORECASE)


def names_an_address(details: str) -> bool:
    """Whether a status's details come from gRPC failing to reach a server (they name its
    address): such details go to the log; a service's own words may go to its caller."""
    return bool(ADDRESS.search(details))


def _tls_file(variable: str) -> bytes | None:
    path = os.environ.get(variable)
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ValueError(f"{variable}={path}: {error.strerror}") from error


def _certificate_and_key() -> tuple[bytes, bytes] | None:
    cert, key = _tls_file(TLS_CERT_ENV), _tls_file(TLS_KEY_ENV)
    if (cert is None) != (key is None):
        raise ValueError(f"TLS needs both {TLS_CERT_ENV} and {TLS_KEY_ENV}")
    return None if cert is None else (cert, key)


def server_credentials() -> grpc.ServerCredentials | None:
    """TLS credentials from HASHREC_TLS_CERT and HASHREC_TLS_KEY, or None (plaintext).
    With HASHREC_TLS_CA as well, mutual TLS: a client must present a certificate that CA
    signed (the gRPC API trusts its caller's user ids, so only our pods may call)."""
    pair = _certificate_and_key()
    if pair is None:
        return None
    ca = _tls_file(TLS_CA_ENV)
    return grpc.ssl_server_credentials([(pair[1], pair[0])], root_certificates=ca,
                                       require_client_auth=ca is not None)


def channel_credentials() -> grpc.ChannelCredentials | None:
    """TLS that trusts HASHREC_TLS_CA, presenting HASHREC_TLS_CERT (and its key) when set,
    or None (plaintext)."""
    ca = _tls_file(TLS_CA_ENV)
    if ca is None:
        return None
    pair = _certificate_and_key()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, certificate_chain=pair[0] if pair else None,
        private_key=pair[1] if pair else None)


def aio_channel(target: str, interceptors: Sequence | None = None) -> grpc.aio.Channel:
    """A channel with CHANNEL_OPTIONS, over TLS when HASHREC_TLS_CA is set."""
    credentials = channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS,
                                         interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS,
                                   interceptors=interceptors)


def blocking_channel(target: str) -> grpc.Channel:
    """The same for blocking callers (the command line)."""
    credentials = channel_credentials()
    if credentials is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


Register = Callable[[grpc.aio.Server], None]
#: the gauge of calls in flight, per server process
IN_FLIGHT_METRIC = "hashrec_grpc_in_flight"


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("hashrec_grpc_requests", "gRPC requests handled",
                                ["method", "code"], registry=registry)
        self.latency = Histogram("hashrec_grpc_seconds", "gRPC handling time", ["method"],
                                 registry=registry)
        # What an autoscaler should scale on (deploy/: the HPAs through prometheus-adapter):
        # calls being handled now. CPU says little for a service that mostly waits on its
        # backends, and nothing for a GPU.
        self.in_flight = Gauge(IN_FLIGHT_METRIC, "gRPC calls being handled now",
                               registry=registry)
        # How late the event loop runs what is ready: every call waits this long to be
        # read, admitted or refused, whatever the handler does.
        self.loop_lag = Histogram("hashrec_event_loop_lag_seconds",
                                  "how late the event loop woke for a timer",
                                  buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                           1.0, 2.5), registry=registry)
        self.gc = GcPauses(registry)


class GcPauses:
    """``hashrec_gc_pause_seconds`` by generation, from ``gc.callbacks`` while started. A
    collection stops every thread of the process: a long one is a stall of every call in
    flight, refusals included."""

    def __init__(self, registry: CollectorRegistry) -> None:
        pause = Histogram("hashrec_gc_pause_seconds",
                          "garbage collections of this process, by generation",
                          ["generation"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                   0.25, 0.5, 1.0), registry=registry)
        self._by_generation = [pause.labels(str(g)) for g in range(3)]  # once, not a call
        self._started = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: times each collection."""
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(
                time.perf_counter() - self._started)

    def start(self) -> None:
        gc.callbacks.append(self.on_gc)

    def stop(self) -> None:
        if self.on_gc in gc.callbacks:
            gc.callbacks.remove(self.on_gc)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every unary call by method and final status code, and times it."""

    def __init__(self, metrics: _Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method, inner, metrics = details.method, handler.unary_unary, self.metrics

        async def timed(request, context):
            started = asyncio.get_running_loop().time()
            code = "OK"
            metrics.in_flight.inc()
            try:
                return await inner(request, context)
            except BaseException:
                code = (context.code() or grpc.StatusCode.UNKNOWN).name
                raise
            finally:
                metrics.in_flight.dec()
                metrics.requests.labels(method, code).inc()
                metrics.latency.labels(method).observe(
                    asyncio.get_running_loop().time() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class LateServicer:
    """Stands in for a servicer while its models load: every RPC answers UNAVAILABLE
    ("<what> is still loading") until ``target`` is set, then forwards to it. The server
    can therefore listen (and report NOT_SERVING) before the models exist."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.target: object | None = None

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        async def forward(request, context):
            if self.target is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"{self.what} is still loading")
            return await getattr(self.target, method)(request, context)

        return forward


#: "0": leave what a service loaded to the garbage collector's full scans (to compare)
GC_FREEZE_ENV = "HASHREC_GC_FREEZE"
#: the servers of this process started and not yet stopped
_RUNNING: set[GrpcServer] = set()


def freeze_loaded() -> None:
    """Leaves what the process holds now (its loaded models) out of later full
    collections, which would otherwise scan it all again and stall every call in flight
    (bench/serving.py prints the recommender's pauses; HASHREC_GC_FREEZE=0 to compare).
    Unfrozen and collected first: a model version dropped since the last freeze is
    garbage in a cycle, which a frozen heap would keep for the life of the process."""
    if os.environ.get(GC_FREEZE_ENV, "1") == "0":
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class GrpcServer:
    def __init__(self, services: Sequence[tuple[str, Register]], host: str = "127.0.0.1",
                 port: int = 0, grace: float = 5.0, metrics_port: int | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        """``services``: (full service name, function adding the servicer to a server).
        ``metrics_port``: serve Prometheus metrics there (0: any free port)."""
        self.names = [name for name, _ in services]
        #: the servicer answering calls, once its models are loaded (for tests and tools)
        self.servicer: object | None = None
        #: switches to the newest verified model version, if the service can (SIGHUP:
        #: ``reload_on_signal``); in-flight calls finish on the servicer they started on
        self.reload: Callable[[], Awaitable[None]] | None = None
        self._reloading = asyncio.Lock()
        self.grace = grace
        self.registry = registry or CollectorRegistry()  # one per server: no clashes
        self.metrics = _Metrics(self.registry)
        self.server = grpc.aio.server(options=server_options(), interceptors=[
            MetricsInterceptor(self.metrics), *server_interceptors()])
        self.metrics_port: int | None = None
        if metrics_port is not None:
            try:
                http_server, _ = start_http_server(metrics_port, addr=host,
                                                   registry=self.registry)
            except OSError as error:
                raise StartupError(f"could not serve metrics on {host}:{metrics_port}: "
                                   f"{error.strerror} (another instance?)") from None
            self.metrics_port = http_server.server_port
            self._on_stop_metrics = http_server.shutdown
        for _, register in services:
            register(self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self._on_stop: list[Callable[[], None]] = []
        if self.metrics_port is not None:
            self._on_stop.append(self._on_stop_metrics)
        credentials = server_credentials()
        self.tls = credentials is not None
        try:
            self.port = (self.server.add_secure_port(f"{host}:{port}", credentials)
                         if self.tls else self.server.add_insecure_port(f"{host}:{port}"))
        except RuntimeError:  # grpc.aio: "Failed to bind to address"
            self.port = 0
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None  # the plaintext health-only port, if any
        if self.tls and os.environ.get(HEALTH_PORT_ENV):
            self.health_server = grpc.aio.server(options=NO_REUSEPORT)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(
                f"{host}:{os.environ[HEALTH_PORT_ENV]}")
        if self.port == 0:
            raise StartupError(f"could not bind {host}:{port}: the port is in use (another "
                               "instance?) or not ours to take")
        self.address = f"{host}:{self.port}"

    async def _set_all(self, status: int) -> None:
        for name in ("", *self.names):
            await self.health.set(name, status)

    async def _watch_loop(self, every: float = 0.05) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(every)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - asked - every))

    async def start(self) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._watcher = asyncio.ensure_future(self._watch_loop())
        self.metrics.gc.start()
        self.on_stop(self.metrics.gc.stop)
        self.on_stop(self._watcher.cancel)
        await self.server.start()
        _RUNNING.add(self)
        if self.health_server is not None:
            await self.health_server.start()
        log.info("serving %s on %s (health NOT_SERVING until ready)", self.names, self.address)

    async def set_serving(self, serving: bool) -> None:
        if serving:
            freeze_loaded()
        await self._set_all(health_pb2.HealthCheckResponse.SERVING if serving
                            else health_pb2.HealthCheckResponse.NOT_SERVING)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after the server has drained (release workers, tasks)."""
        self._on_stop.append(callback)

    async def stop(self) -> None:
        """Health NOT_SERVING first (load balancers stop sending), then drain and stop."""
        _RUNNING.discard(self)
        await self.set_serving(False)
        await self.server.stop(self.grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        for callback in self._on_stop:
            callback()
        log.info("stopped %s", self.address)

    def stop_on_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))

    def reload_on_signal(self) -> None:
        """SIGHUP runs ``reload``, one at a time; without one SIGHUP is logged and ignored
        (its default would end the process)."""
        async def run() -> None:
            if self.reload is None:
                log.info("%s: SIGHUP: this service has no model to reload", self.address)
                return
            async with self._reloading:
                await self.reload()
                freeze_loaded()  # the version it replaced may be garbage now

        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: asyncio.ensure_future(run()))

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def start_loading(service_name: str, add_servicer: Callable[[object, grpc.aio.Server],
                                                                 None],
                        what: str, host: str, port: int, metrics_port: int | None = None,
                        ) -> tuple[GrpcServer, LateServicer]:
    """A started server for one service whose models are still loading (health
    NOT_SERVING, calls UNAVAILABLE); set ``late.target`` and ``set_serving(True)`` when
    they are loaded and verified. Numeric libraries' threads are capped at the service's
    CPU allowance first (HASHREC_THREADS; shared/batching.py)."""
    threads = limit_numeric_threads()
    log.info("%s: numeric threads %s", service_name.rsplit(".", 1)[-1], threads)
    late = LateServicer(what)
    server = GrpcServer([(service_name, lambda s: add_servicer(late, s))], host, port,
                        metrics_port=metrics_port)
    await server.start()
    return server, late


async def k_or_abort(k: int, limit: int, context: grpc.aio.ServicerContext,
                     default: int = 10) -> int:
    """A request's k (0 means ``default``), or INVALID_ARGUMENT naming the range."""
    k = k or default
    if not 1 <= k <= limit:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"k must be between 1 and {limit} (0 means {default}), got {k}")
    return k


async def limits_or_abort(context: grpc.aio.ServicerContext, *problems: str | None) -> None:
    """INVALID_ARGUMENT with the first problem found by shared/limits.py's checks, if any."""
    for problem in problems:
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
