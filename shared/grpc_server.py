"""The one gRPC server bootstrap every hashrec service uses.

- grpc.aio server with message size limits on both directions (images travel as bytes);
- the standard health service: NOT_SERVING until ``set_serving(True)`` (the service has
  loaded and verified its models), NOT_SERVING again as soon as shutdown starts, while
  in-flight calls drain for ``grace`` seconds;
- server reflection, so grpcurl and friends can list and call the services;
- SIGTERM / SIGINT start that graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

#: An image may be 20 MiB; the rest of a message is small.
MAX_MESSAGE_BYTES = 24 * 1024 * 1024
CHANNEL_OPTIONS = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES))

Register = Callable[[grpc.aio.Server], None]


class GrpcServer:
    def __init__(self, services: Sequence[tuple[str, Register]], host: str = "127.0.0.1",
                 port: int = 0, grace: float = 5.0) -> None:
        """``services``: (full service name, function adding the servicer to a server)."""
        self.names = [name for name, _ in services]
        self.grace = grace
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS)
        for _, register in services:
            register(self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self._on_stop: list[Callable[[], None]] = []
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind {host}:{port}")
        self.address = f"{host}:{self.port}"

    async def _set_all(self, status: int) -> None:
        for name in ("", *self.names):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("serving %s on %s (health NOT_SERVING until ready)", self.names, self.address)

    async def set_serving(self, serving: bool) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.SERVING if serving
                            else health_pb2.HealthCheckResponse.NOT_SERVING)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after the server has drained (release workers, tasks)."""
        self._on_stop.append(callback)

    async def stop(self) -> None:
        """Health NOT_SERVING first (load balancers stop sending), then drain and stop."""
        await self.set_serving(False)
        await self.server.stop(self.grace)
        for callback in self._on_stop:
            callback()
        log.info("stopped %s", self.address)

    def stop_on_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))

    async def wait(self) -> None:
        await self.server.wait_for_termination()
