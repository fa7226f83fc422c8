"""The stack a load bench runs against, and what it reads off it: `hashrec serve`'s
processes (or all five services in the bench's process) on the newest trained models, each
child's CPU time from /proc, and the recommender's event-loop lag from its metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from services.vision.model import VisionModel
from services.vision.server import serve


def served_models(args: argparse.Namespace) -> tuple[Path, Path]:
    """(--models, --user-model), else the newest under $HASHREC_MODELS, trained first when
    there are none."""
    from commands.cli.common import newest_model
    from commands.train import train_default
    from services.user.train import newest_user_model, train_user_model
    from services.vision.store import FeatureStore
    from shared.config import models_dir

    store = FeatureStore(models_dir() / "features")
    model_dir = args.models or newest_model(models_dir()) or train_default(
        models_dir(), store).directory
    user_dir = args.user_model or newest_user_model(models_dir() / "user") or \
        train_user_model(models_dir() / "user", store, image_model=model_dir)[1]
    return model_dir, user_dir


@contextlib.asynccontextmanager
async def serve_processes(model_dir: Path, user_dir: Path, batch: int,
                          report_pid: bool = False, metrics_port: int = 0) -> AsyncIterator:
    """`hashrec serve` (one process per service) on free ports: the recommender's address
    (with ``report_pid``: and the supervisor's pid)."""
    import os
    import socket
    import sys

    def free_run(count: int = 5) -> int:
        """Below the ephemeral range, where outgoing connections never take a port."""
        import random

        for _ in range(200):
            base = random.randrange(10_000, 32_000)
            try:
                for offset in range(count):
                    with socket.socket() as taken:
                        taken.bind(("127.0.0.1", base + offset))
                return base
            except OSError:
                continue
        raise RuntimeError("no five free ports in a row")

    port = free_run()
    env = {**os.environ, "HASHREC_VISION_MAX_BATCH": str(batch),
           "HASHREC_USER_STATE": str(user_dir.parent / "bench-state"),
           **{f"HASHREC_{n}_METRICS_PORT": "0"
              for n in ("VISION", "WORD", "GRAPH", "USER")},
           "HASHREC_RECOMMENDER_METRICS_PORT": str(metrics_port)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "commands.cli", "serve", "--port", str(port), "--http-port",
        "0", "--models", str(model_dir), "--user-model", str(user_dir), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    drain = None
    try:
        while not (line := (await process.stdout.readline()).decode()).startswith("serving "):
            if not line:
                raise RuntimeError("hashrec serve stopped before serving")
        drain = asyncio.create_task(process.stdout.read())  # keep its pipe from filling
        yield (f"127.0.0.1:{port}", process.pid) if report_pid else f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
        if drain is not None:
            drain.cancel()


async def start_stack(model: VisionModel, batch: int, model_dir: Path, user_dir: Path,
                      ) -> tuple[list[grpc.aio.Server], str]:
    """The five services in this process (`hashrec serve --single-process`): (servers, the
    recommender's address)."""
    from services.graph.server import serve as serve_graph
    from services.recommender.server import serve as serve_recommender
    from services.user.server import serve as serve_user
    from services.word.server import serve as serve_word

    state = user_dir.parent / "bench-state"  # the bench's own journal, never the served one
    vision = await serve("127.0.0.1", 0, model, max_batch=batch)
    word = await serve_word("127.0.0.1", 0, model_dir)
    graph = await serve_graph("127.0.0.1", 0, model_dir)
    user = await serve_user("127.0.0.1", 0, user_dir, state)
    recommender = await serve_recommender("127.0.0.1", 0, model_dir, vision.address,
                                          word.address, graph.address, user.address)
    return [recommender, user, graph, word, vision], recommender.address


def service_pids(supervisor: int) -> dict[str, int]:
    """Each of `hashrec serve`'s children by the service it runs (its module's name, else
    "pid N"), from the supervisor's children in /proc."""
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return {}
    found = {}
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        module = next((part.decode() for part in command if part.startswith(b"services.")),
                      None)
        found[module.split(".")[1] if module else f"pid {child}"] = int(child)
    return found


def service_rss_kb(supervisor: int) -> dict[str, int]:
    """Resident memory (kB) of each of `hashrec serve`'s children by service; a child gone
    meanwhile (restarted) is left out."""
    found = {}
    for name, pid in service_pids(supervisor).items():
        rss = process_rss_kb(pid)
        if rss is not None:
            found[name] = rss
    return found


def process_rss_kb(pid: int | str = "self") -> int | None:
    """A process's resident memory (kB, VmRSS); None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:")))
    except (OSError, StopIteration):
        return None


def memory_kib(pid: int | str = "self", mapped_suffix: str = "_faiss.npy",
               ) -> dict[str, int]:
    """A process's memory in KiB: rss, pss (each shared page divided among the processes
    that map it), anonymous (its own), and the files ending in ``mapped_suffix`` it maps
    (a model's photo indexes): their size and how much of them is resident in it."""
    found = {"rss": 0, "pss": 0, "anonymous": 0, "index_map_size": 0, "index_map_rss": 0}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header
            inside = line.endswith(mapped_suffix)
            continue
        key = fields[0].rstrip(":")
        if key in ("Rss", "Pss", "Anonymous"):
            found[key.lower()] += int(fields[1])
        if inside and key in ("Size", "Rss"):
            found[f"index_map_{key.lower()}"] += int(fields[1])
    return found


def service_cpu_seconds(supervisor: int | None) -> dict[str, float]:
    """CPU seconds (user + system) each of `hashrec serve`'s children has used, by service,
    and this process's own ("client"), from /proc."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    used = {"client": sum(os.times()[:2])}
    for name, pid in (service_pids(supervisor) if supervisor is not None else {}).items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def loop_lag_buckets(port: int | None) -> dict[float, float]:
    """The recommender's event-loop lag histogram (le → count), from its metrics."""
    import urllib.request

    if port is None:
        return {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    buckets = {}
    for line in text.decode().splitlines():
        if line.startswith("hashrec_event_loop_lag_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def full_collections(port: int | None) -> tuple[float, float]:
    """The recommender's full (generation 2) garbage collections so far: (count, seconds),
    from its metrics."""
    import urllib.request

    if port is None:
        return 0.0, 0.0
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    found = {}
    for line in text.decode().splitlines():
        for stat in ("count", "sum"):
            if line.startswith(f'hashrec_gc_pause_seconds_{stat}{{generation="2"}}'):
                found[stat] = float(line.rsplit(" ", 1)[1])
    return found.get("count", 0.0), found.get("sum", 0.0)


def lag_p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound (ms) of the bucket holding the 99th percentile, over the row."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return None
    return next(1000 * le for le, count in counts.items() if count >= 0.99 * total)


