"""`hashrec serve`: one process per service, supervised.

Each service runs as its own child, ``python -m services.<name>.server``, configured by the
environment variables the service reads anyway (the same ones a Kubernetes pod sets).
Start order follows the call graph: vision, word, graph and user together; the recommender
once they answer their health checks; the gateway last. A child that dies after it was
ready is logged (exit code or signal) and restarted with exponential backoff, 1 s doubling
to 30 s, back to 1 s once it has run for a minute. One that dies before it was ever ready
is a bad start: the supervisor stops the rest and exits 1, naming the child and quoting its
last lines of output.

SIGTERM or SIGINT stops the children in reverse order, the gateway first (so no new
request reaches the recommender), then the recommender (so no new call reaches the
backends), then the backends; each child drains on SIGTERM (health NOT_SERVING, calls in
flight finish) and is killed only if it outlasts ``stop_timeout``. Then the supervisor
exits 0.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import dataclasses
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("hashrec.serve")

#: restart backoff: first delay, ceiling, and how long a child must run to reset it
BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET = 1.0, 30.0, 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: how long a child may take from its start to ready (loading and verifying models)
READY_TIMEOUT = 300.0
#: lines of a child's output kept to explain a bad start
TAIL_LINES = 20


@dataclass
class ChildSpec:
    """One service: its module (``python -m``), its environment on top of ours, how to
    tell it is ready, and which children must be ready before it starts."""

    name: str
    module: str
    env: Mapping[str, str]
    #: whether the child (its pid given) answers as ready on a port it holds itself
    ready: Callable[[int], Awaitable[bool]]
    after: tuple[str, ...] = ()
    #: whether SIGHUP to the supervisor reaches it (it switches to its newest model)
    reloads: bool = False
    #: its environment after a rollout the supervisor accepted, so that a restart starts
    #: on the version it was serving: a mapping, or a function that finds the version to
    #: roll out and checks it (raising ValueError or FileNotFoundError to refuse it)
    rollout_env: Mapping[str, str] | Callable[[], Mapping[str, str]] = field(
        default_factory=dict)


@dataclass
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    ever_ready: bool = False
    relay: asyncio.Task | None = None  # copies its output to ours
    tail: collections.deque = field(default_factory=lambda: collections.deque(
        maxlen=TAIL_LINES))


class BadStartError(RuntimeError):
    """A child exited, or never became ready, before it had ever served."""


class Supervisor:
    def __init__(self, specs: Sequence[ChildSpec], stop_timeout: float = 30.0,
                 ready_timeout: float = READY_TIMEOUT) -> None:
        self.children = {spec.name: Child(spec) for spec in specs}
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task] = []
        self._rollouts: set[asyncio.Task] = set()

    # --- lifecycle --------------------------------------------------------------------

    async def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Starts every child, keeps them alive until SIGTERM / SIGINT, stops them;
        0 after a clean stop, 1 after a bad start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.roll_out)
        try:
            await self.start_all()
        except BadStartError as error:
            log.error("%s", error)
            await self.stop_all()
            return 1
        if self._stopping.is_set():  # SIGTERM before every child was ready: no banner
            log.warning("stopped before every service was ready")
            await self.stop_all()
            return 1
        if on_ready is not None:
            on_ready()
        self._watchers = [asyncio.create_task(self._watch(child))
                          for child in self.children.values()]
        await self._stopping.wait()
        await self.stop_all()
        return 0

    def stop(self) -> None:
        self._stopping.set()

    def roll_out(self) -> None:
        """(SIGHUP) The version to roll out is found and verified here first; refused, no
        child hears of it, and each keeps (and restarts on) the version it serves.
        Accepted, it becomes the children's version for any later restart, and SIGHUP
        reaches every child that reloads: each switches to it, the backends first in
        effect (the recommender waits until they serve the new version before it
        switches, and they keep the old one for it until then), so no answer is left
        without a backend's scores."""
        task = asyncio.get_running_loop().create_task(self._roll_out())
        self._rollouts.add(task)
        task.add_done_callback(self._rollouts.discard)

    async def _roll_out(self) -> None:
        children = [c for c in self.children.values() if c.spec.reloads
                    and c.process is not None and c.process.returncode is None]
        loop = asyncio.get_running_loop()
        envs = {}
        for child in children:
            wanted = child.spec.rollout_env
            try:
                envs[child.spec.name] = dict(await loop.run_in_executor(None, wanted)
                                             if callable(wanted) else wanted)
            except (OSError, ValueError) as error:
                log.error("rollout refused: %s; every service keeps its version", error)
                return
        log.info("rollout: SIGHUP to %s", ", ".join(c.spec.name for c in children))
        for child in children:
            assert child.process is not None
            child.spec = dataclasses.replace(
                child.spec, env={**child.spec.env, **envs[child.spec.name]})
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGHUP)

    async def start_all(self) -> None:
        """Starts the children wave by wave: each once everything it comes after is
        ready."""
        pending = dict(self.children)
        while pending:
            wave = [c for c in pending.values()
                    if all(self.children[a].ever_ready for a in c.spec.after)]
            if not wave:
                raise BadStartError(f"children {sorted(pending)} wait on each other")
            for child in wave:
                await self._spawn(child)
            await asyncio.gather(*(self._until_ready(child) for child in wave))
            for child in wave:
                del pending[child.spec.name]
            if self._stopping.is_set():
                return

    async def stop_all(self) -> None:
        """SIGTERM in reverse start order, one wave at a time, each child given
        ``stop_timeout`` to drain."""
        self._stopping.set()
        for task in self._watchers:
            task.cancel()
        order = list(self.children.values())
        waves: list[list[Child]] = []
        done: set[str] = set()
        while len(done) < len(order):  # the start waves, computed again
            wave = [c for c in order if c.spec.name not in done
                    and all(a in done for a in c.spec.after)]
            waves.append(wave)
            done |= {c.spec.name for c in wave}
        for wave in reversed(waves):
            await asyncio.gather(*(self._terminate(child) for child in wave))

    # --- one child --------------------------------------------------------------------

    async def _spawn(self, child: Child) -> None:
        env = {**os.environ, **child.spec.env, "PYTHONUNBUFFERED": "1"}
        child.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", child.spec.module, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops in order
            preexec_fn=_die_with_parent(os.getpid()))
        child.started = time.monotonic()
        child.relay = asyncio.create_task(self._relay(child, child.process))
        log.info("%s: started (pid %d): python -m %s", child.spec.name, child.process.pid,
                 child.spec.module)

    async def _relay(self, child: Child, process: asyncio.subprocess.Process) -> None:
        """Copies the child's output to ours, each line prefixed with its name."""
        assert process.stdout is not None
        while line := await process.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            child.tail.append(text)
            print(f"[{child.spec.name}] {text}", flush=True)

    async def _until_ready(self, child: Child) -> None:
        deadline = time.monotonic() + self.ready_timeout
        process = child.process
        assert process is not None
        while time.monotonic() < deadline and not self._stopping.is_set():
            if process.returncode is not None:
                await asyncio.sleep(0.2)  # the last lines of its output
                raise BadStartError(
                    f"{child.spec.name} exited with {describe_exit(process.returncode)} "
                    "before it was ready; its last output:\n  " + "\n  ".join(child.tail))
            try:
                if await child.spec.ready(process.pid):
                    child.ever_ready = True
                    log.info("%s: ready in %.1f s", child.spec.name,
                             time.monotonic() - child.started)
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)
        if not self._stopping.is_set():
            raise BadStartError(f"{child.spec.name} was not ready within "
                                f"{self.ready_timeout:.0f} s")

    async def _watch(self, child: Child) -> None:
        """Restarts ``child`` whenever it dies, with backoff, until the supervisor stops."""
        backoff = BACKOFF_START
        while not self._stopping.is_set():
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - child.started
            if ran >= BACKOFF_RESET:
                backoff = BACKOFF_START
            log.warning("%s: exited with %s after %.1f s; restarting in %.0f s",
                        child.spec.name, describe_exit(code), ran, backoff)
            try:
                await asyncio.wait_for(self._stopping.wait(), backoff)
                return
            except TimeoutError:
                pass
            backoff = next_backoff(backoff)
            child.restarts += 1
            await self._spawn(child)

    async def _terminate(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout)
            log.info("%s: stopped (%s)", child.spec.name, describe_exit(process.returncode))
        except TimeoutError:
            log.warning("%s: still running %.0f s after SIGTERM; killing it",
                        child.spec.name, self.stop_timeout)
            process.kill()
            await process.wait()


def end_with_parent(parent: int) -> None:
    """Run in a child: SIGTERM to it when its parent dies, however it dies (Linux's
    PR_SET_PDEATHSIG), so a SIGKILLed supervisor or training driver leaves no orphan
    serving on its ports or holding a fit's memory."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the wish was made
        os.kill(os.getpid(), signal.SIGTERM)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """What a child runs before it starts: ``end_with_parent`` (the supervisor's)."""
    return functools.partial(end_with_parent, parent)


def next_backoff(backoff: float) -> float:
    """The delay before the next restart: doubled, at most BACKOFF_MAX."""
    return min(backoff * 2, BACKOFF_MAX)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# --- readiness probes -------------------------------------------------------------------

def listening_pids(port: int) -> set[int]:
    """The processes holding a listening TCP socket on ``port`` (Linux's /proc: the
    socket's inode in /proc/net/tcp{,6}, then which process has it open)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])  # state 0A: LISTEN
    holders = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                link = os.readlink(fd.path)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    holders.add(int(entry.name))
                    break
        except OSError:
            continue
    return holders


def _own_port(pid: int, port: int) -> bool:
    """Whether the answer on ``port`` can be the child's: it holds the listening socket
    (a process left over from another run answering there is not our child)."""
    holders = listening_pids(port)
    if holders and pid not in holders:
        log.error("port %d is held by pid %s, not by our child %d", port,
                  ", ".join(map(str, sorted(holders))), pid)
        return False
    return True


def grpc_ready(address: str) -> Callable[[int], Awaitable[bool]]:
    """A gRPC health check: SERVING once the service has loaded and verified its models,
    answered by the child itself."""
    async def check(pid: int) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from shared.grpc_server import aio_channel

        async with aio_channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2)
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        return serving and await asyncio.to_thread(
            _own_port, pid, int(address.rsplit(":", 1)[1]))
    return check


def http_ready(url: str) -> Callable[[int], Awaitable[bool]]:
    async def check(pid: int) -> bool:
        import urllib.request
        from urllib.parse import urlsplit

        def get() -> int:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        return await asyncio.to_thread(get) == 200 and await asyncio.to_thread(
            _own_port, pid, urlsplit(url).port or 80)
    return check
