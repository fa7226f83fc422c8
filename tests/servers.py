"""Running async gRPC servers for tests: an event loop in a thread, talked to over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def serving_health_server(loop: LoopThread) -> Any:
    """A started GrpcServer holding only the health service, SERVING, on ``loop``."""
    from shared.grpc_server import GrpcServer

    async def start() -> GrpcServer:
        server = GrpcServer([], "127.0.0.1", 0)  # the health service alone
        await server.start()
        await server.set_serving(True)
        return server

    return loop.call(start())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_ports_in_a_row(count: int) -> int:
    """A port P with P..P+count-1 free (hashrec serve takes five in a row), below the
    kernel's ephemeral range: a port from inside it can be taken as the source port of
    any outgoing connection (a health probe) before the service that was given it binds."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, low - count)
        probes = []
        try:
            for offset in range(count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no {count} free ports in a row")


def start_gateway(loop: LoopThread, settings: Any) -> tuple[Any, str]:
    """The HTTP gateway on ``loop`` at a free port: (its server, its base URL)."""
    from services.gateway.server import serve

    port = free_port()
    return loop.call(serve("127.0.0.1", port, settings)), f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def signed_up(base_url: Any, name: str, password: str = "correct horse battery",
              ) -> Iterator[Any]:
    """An httpx client signed in to a new local account ``name`` on the gateway."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=120) as client:
        response = client.post("/api/account/signup", json={"name": name,
                                                             "password": password})
        if response.status_code != 201:
            raise AssertionError(f"sign-up of {name!r}: {response.status_code} "
                                 f"{response.text}")
        yield client


def stop_gateway(loop: LoopThread, server: Any) -> None:
    async def stopped() -> None:
        server.should_exit = True
        await server.task

    loop.call(stopped())


class RedisServer:
    """A redis-server of the test's own on a free loopback port; nothing kept on disk."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.password = password
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def certificates(folder: Path) -> dict[str, str]:
    """A CA made for the test, and a server certificate it signed for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is missing: apt-get install openssl")
    folder.mkdir()

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
        "ca.pem", "-days", "1", "-subj", "/CN=hashrec test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
        "server.csr", "-subj", "/CN=localhost")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.cnf")
    return {"HASHREC_TLS_CERT": str(folder / "server.pem"),
            "HASHREC_TLS_KEY": str(folder / "server.key"),
            "HASHREC_TLS_CA": str(folder / "ca.pem")}
