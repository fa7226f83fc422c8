"""`hashrec serve` trees for the process-level tests: one started over the stack
fixture's models (``serving``), read line by line (``Served``), and a steady load of
Recommend calls against it (``Load``)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from hashrec.v1 import (
    recommender_pb2,
    recommender_pb2_grpc,
)

from shared.grpc_server import CHANNEL_OPTIONS
from tests.servers import free_ports_in_a_row

SERVICES = ("vision", "word", "graph", "user", "recommender")
#: the caller's deadline for one Recommend under load
DEADLINE_S = 10.0
#: the issue's bound: answers are whole again within this after a restart
RECOVERY_S = 30.0


class Served:
    """A running `hashrec serve` (multi-process) and what its output says."""

    def __init__(self, process: subprocess.Popen, port: int, folder: Path) -> None:
        self.process, self.port, self.folder = process, port, folder
        self.lines: list[str] = []
        self.pids: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            started = re.match(r".*hashrec\.serve: ([\w-]+): started \(pid (\d+)\)", line)
            if started:
                self.pids[started[1]] = int(started[2])

    def wait_for(self, pattern: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; output:\n"
                             + "\n".join(self.lines[-40:]))

    def kill(self, service: str, sig: signal.Signals) -> int:
        pid = self.pids[service]
        os.kill(pid, sig)
        return pid

    def restarted(self, service: str, old_pid: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.pids.get(service) == old_pid and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.pids[service] != old_pid, f"{service} was not restarted"


@contextlib.contextmanager
def serving(stack: dict, folder: Path, models: Path | None = None, user_shards: int = 1,
            **env: str) -> Iterator[Served]:
    """`hashrec serve` over the stack fixture's small models (or ``models``), every
    service its own process (the user service as ``user_shards`` shards); metrics on free
    ports; the user journal and the pid file in ``folder``; ``env`` on top."""
    port = free_ports_in_a_row(4 + user_shards)
    environment = {**os.environ, "HASHREC_MODELS": str(folder / "models"),
                   "HASHREC_USER_STATE": str(folder / "state"),
                   "HASHREC_BACKEND_DEADLINE_S": "2", "PYTHONUNBUFFERED": "1",
                   **{f"HASHREC_{name.upper()}_METRICS_PORT": "0" for name in SERVICES},
                   **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "serve", "--port", str(port), "--http-port",
         "0", "--models", str(models or stack["trained"].directory), "--user-model",
         str(stack["user_dir"]), "--user-shards", str(user_shards)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    served = Served(process, port, folder)
    try:
        served.wait_for(r"^serving hashrec\.v1\.RecommenderService")
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass
class Outcome:
    at: float
    seconds: float
    code: str  # "OK" or the gRPC status name
    degraded_reasons: tuple[str, ...] = ()
    version: str = ""  # the model version that answered


@dataclass
class Load:
    """Recommend calls back to back from a thread (every third with a known user), each
    with the caller's deadline; what each call got. Each call's photo is new to every cache
    (a few bytes after the JPEG's end, which decoders ignore), so every call reaches every
    service."""

    target: str
    image: bytes
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE_S + 5)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
            calls = 0
            while not self._stop.is_set():
                calls += 1
                started = time.monotonic()
                try:
                    reply = stub.Recommend(recommender_pb2.RecommendRequest(
                        image=self.image + f"\0load-{time.time_ns()}".encode(),
                        user_id="u00003" if calls % 3 == 0 else "", k=5),
                        timeout=DEADLINE_S)
                    outcome = Outcome(started, time.monotonic() - started, "OK",
                                      tuple(reply.degraded_reasons), reply.model_version)
                except grpc.RpcError as error:
                    outcome = Outcome(started, time.monotonic() - started, error.code().name)
                self.outcomes.append(outcome)
                time.sleep(0.02)

    def since(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.at >= moment]

    def wait_until_whole(self, since: float, timeout: float) -> float:
        """Seconds from ``since`` to the first of three whole answers in a row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = self.since(since)
            for i in range(len(recent) - 2):
                if all(o.code == "OK" and not o.degraded_reasons for o in recent[i:i + 3]):
                    return recent[i].at - since
            time.sleep(0.2)
        raise AssertionError(f"answers not whole {timeout} s after the fault: "
                             f"{[(o.code, o.degraded_reasons) for o in self.since(since)[-5:]]}")


def sample_photo(data_dir: Path) -> bytes:
    return (data_dir / "food" / "images" / "0000008.jpg").read_bytes()


def children_of(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                        b"\0", b" ").decode()
            except (OSError, IndexError):
                continue
    return found
