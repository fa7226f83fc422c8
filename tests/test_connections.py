"""gRPC connections as Kubernetes needs them: clients balance calls over every address a
target resolves to, and servers recycle connections so that clients resolve again."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.grpc_server import CHANNEL_OPTIONS, GrpcServer, blocking_channel, server_options
from tests.servers import LoopThread, serving_health_server


def test_servers_recycle_connections_only_when_configured(monkeypatch) -> None:
    monkeypatch.delenv("HASHREC_MAX_CONNECTION_AGE_S", raising=False)
    assert "grpc.max_connection_age_ms" not in dict(server_options())
    monkeypatch.setenv("HASHREC_MAX_CONNECTION_AGE_S", "60")
    options = dict(server_options())
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000


def test_calls_over_a_dns_target_keep_succeeding_while_connections_are_recycled(
        monkeypatch) -> None:
    monkeypatch.setenv("HASHREC_MAX_CONNECTION_AGE_S", "0.5")
    loop = LoopThread()
    server = serving_health_server(loop)
    answered = 0
    try:
        with grpc.insecure_channel(f"dns:///{server.address}",
                                   options=CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            until = time.monotonic() + 3  # six connection lifetimes
            while time.monotonic() < until:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                answered += 1
                time.sleep(0.02)
    finally:
        loop.call(server.stop())
        loop.close()
    assert answered > 20



def test_the_in_flight_gauge_counts_calls_being_handled() -> None:
    """The metric the autoscalers scale on (deploy/: HorizontalPodAutoscaler)."""
    import asyncio
    import threading

    from shared.grpc_server import IN_FLIGHT_METRIC

    loop = LoopThread()
    release = asyncio.Event()

    async def wait(request: bytes, context) -> bytes:
        await release.wait()
        return request

    handler = grpc.method_handlers_generic_handler("test.Slow", {
        "Wait": grpc.unary_unary_rpc_method_handler(wait)})

    async def start() -> GrpcServer:
        server = GrpcServer([("test.Slow", lambda s: s.add_generic_rpc_handlers((handler,)))],
                            "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.call(start())

    def in_flight() -> float:
        return server.registry.get_sample_value(IN_FLIGHT_METRIC) or 0.0

    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            call = channel.unary_unary("/test.Slow/Wait")
            replies = []
            callers = [threading.Thread(target=lambda: replies.append(call(b"x", timeout=30)))
                       for _ in range(3)]
            for caller in callers:
                caller.start()
            until = time.monotonic() + 10
            while in_flight() < 3 and time.monotonic() < until:
                time.sleep(0.02)
            assert in_flight() == 3
            loop.loop.call_soon_threadsafe(release.set)
            for caller in callers:
                caller.join(timeout=10)
            assert replies == [b"x"] * 3 and in_flight() == 0
    finally:
        loop.call(server.stop())
        loop.close()


def test_under_tls_only_the_health_port_speaks_plaintext_and_callers_need_a_certificate(
        monkeypatch, tmp_path) -> None:
    """The kubelet's gRPC probes cannot do TLS: HASHREC_HEALTH_PORT serves health alone in
    plaintext, while the service's own port refuses plaintext, and refuses a TLS caller
    without a certificate the CA signed (mutual TLS: the API trusts its caller)."""
    from pathlib import Path

    from tests.servers import certificates, free_port

    tls = certificates(tmp_path / "tls")
    for variable, path in tls.items():
        monkeypatch.setenv(variable, path)
    health_port = free_port()
    monkeypatch.setenv("HASHREC_HEALTH_PORT", str(health_port))
    loop = LoopThread()
    server = serving_health_server(loop)
    request = health_pb2.HealthCheckRequest()
    try:
        assert server.tls and server.health_port == health_port
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as plain:
            assert health_pb2_grpc.HealthStub(plain).Check(request, timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(server.address) as plain, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(plain).Check(request, timeout=5)
        anonymous = grpc.ssl_channel_credentials(
            root_certificates=Path(tls["HASHREC_TLS_CA"]).read_bytes())
        with grpc.secure_channel(server.address, anonymous) as secure, \
                pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(secure).Check(request, timeout=5)
        with blocking_channel(server.address) as ours:  # our pods present the certificate
            assert health_pb2_grpc.HealthStub(ours).Check(request, timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
    finally:
        loop.call(server.stop())
        loop.close()


def test_a_server_times_every_garbage_collection_and_freezes_what_it_loaded(
        monkeypatch) -> None:
    """A full collection stops every call in flight: its pauses are a metric, and what was
    loaded before SERVING is left out of later collections (gc.freeze), unless
    HASHREC_GC_FREEZE=0."""
    import gc
    import weakref

    from shared.grpc_server import freeze_loaded

    loop = LoopThread()

    gc.unfreeze()
    server = serving_health_server(loop)
    try:
        assert gc.get_freeze_count() > 0
        count = server.registry.get_sample_value(
            "hashrec_gc_pause_seconds_count", {"generation": "2"}) or 0.0
        gc.collect()
        assert server.registry.get_sample_value(
            "hashrec_gc_pause_seconds_count", {"generation": "2"}) == count + 1
        # a model version dropped after the freeze (garbage in a cycle) is freed by the
        # next freeze (after a rollout), not kept for the life of the process
        class Version:
            pass

        dropped = Version()
        dropped.itself = dropped
        alive = weakref.ref(dropped)
        loop.call(server.set_serving(True))
        del dropped
        gc.collect()
        assert alive() is not None  # frozen: the collector does not see it
        freeze_loaded()
        assert alive() is None
        gc.unfreeze()
        monkeypatch.setenv("HASHREC_GC_FREEZE", "0")
        loop.call(server.set_serving(True))
        assert gc.get_freeze_count() == 0
    finally:
        loop.call(server.stop())
        loop.close()
        gc.unfreeze()
    assert server.metrics.gc.on_gc not in gc.callbacks  # a stopped server times nothing
