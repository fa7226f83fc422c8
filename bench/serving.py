"""Load on the services over loopback gRPC, next to a bare echo server in the same run.

    python bench/serving.py [--seconds 10] [--concurrency 64] [--max-calls 20000]
        [--only vision|recommend]

Every load loop is bounded in time and count and targets 127.0.0.1 only. Prints QPS,
p50 / p95 / p99 latency and errors for: a bare gRPC echo server (the reference); warm and
cold Embed on the vision service alone; warm and cold Recommend on the whole stack in both
of `hashrec serve`'s modes, one process per service (its default) and all five in this
process (`--single-process`), on the newest trained models under $HASHREC_MODELS (trained
first when there are none; or --models / --user-model), half the calls with a known user
(--user-share).
Warm: photos whose features are cached; cold: a new photo every call. Then the ratios
warm / echo and cold / raw model images/s (the raw model measured in-process at the
service's batch size).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import torch
from hashrec.v1 import vision_pb2, vision_pb2_grpc

from services.vision.model import VisionModel, decode_image, preprocess
from services.vision.server import serve
from shared.config import data_root, setup_logging
from shared.grpc_server import CHANNEL_OPTIONS

ECHO_METHOD = "/bench.Echo/Echo"


async def echo_server() -> tuple[grpc.aio.Server, str]:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def load(call: Callable[[int], Awaitable[object]], seconds: float, concurrency: int,
               max_calls: int, failures: tuple[type[BaseException], ...] = (
                   grpc.aio.AioRpcError,)) -> dict[str, float]:
    """``concurrency`` workers call ``call(i)`` until the time or the call budget is spent."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors, issued
        while time.perf_counter() < deadline and issued < max_calls:
            number = issued
            issued += 1
            started = time.perf_counter()
            try:
                await call(number)
                latencies.append(time.perf_counter() - started)
            except failures:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"calls": len(latencies), "qps": len(latencies) / elapsed, "errors": errors,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99))}


def raw_images_per_second(model: VisionModel, photos: list[bytes], batch: int) -> float:
    tensors = torch.stack([preprocess(decode_image(p)) for p in photos[:batch]])
    model.embed_tensors(tensors)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < 5:
        model.embed_tensors(tensors)
        done += batch
    return done / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    root = data_root()
    photos = [p.read_bytes() for p in
              sorted((root / "instagram" / "images").rglob("*.jpg"))
              + sorted((root / "food" / "images").glob("*.jpg"))]
    model = VisionModel(device="cpu")
    rows = {}

    server, address = await echo_server()
    async with grpc.aio.insecure_channel(address) as channel:
        echo = channel.unary_unary(ECHO_METHOD)
        rows["echo"] = await load(lambda i: echo(b"x" * 64), args.seconds, args.concurrency,
                                  args.max_calls)
    await server.stop(None)

    if args.only in (None, "recommend"):
        for mode in ("processes", "single"):
            rows.update(await recommend_rows(model, photos, args, mode))
    if args.only == "recommend":
        report(rows, raw_images_per_second(model, photos, args.batch), args)
        return
    vision = await serve("127.0.0.1", 0, model, max_batch=args.batch)
    async with grpc.aio.insecure_channel(vision.address, options=CHANNEL_OPTIONS) as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        warm_set = photos[:32]
        for photo in warm_set:  # fill the cache
            await stub.Embed(vision_pb2.EmbedRequest(image=photo))
        rows["warm Embed"] = await load(
            lambda i: stub.Embed(vision_pb2.EmbedRequest(image=warm_set[i % 32]), timeout=30),
            args.seconds, args.concurrency, args.max_calls)
        cold_set = photos[32:]
        rows["cold Embed"] = await load(
            lambda i: stub.Embed(vision_pb2.EmbedRequest(image=cold_set[i]), timeout=60),
            args.seconds, args.concurrency, len(cold_set))
    await vision.stop()
    report(rows, raw_images_per_second(model, photos, args.batch), args)


def report(rows: dict[str, dict[str, float]], raw: float, args: argparse.Namespace) -> None:
    print(f"loopback, {args.concurrency} calls in flight, up to {args.seconds:.0f} s each; "
          f"vision max batch {args.batch}")
    width = max(16, *(len(name) + 2 for name in rows))
    print(f"{'':<{width}}{'calls':>8}{'QPS':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}")
    for name, row in rows.items():
        print(f"{name:<{width}}{row['calls']:>8.0f}{row['qps']:>9.1f}{row['p50']:>9.1f}"
              f"{row['p95']:>9.1f}{row['p99']:>9.1f}{row['errors']:>8.0f}")
    print(f"raw model, batch {args.batch}, in-process: {raw:.1f} images/s")
    echo = rows["echo"]["qps"]
    kinds = ["Embed"] + [f"Recommend{mode}" for mode in ("", " (processes)", " (single)")]
    for kind in kinds:
        if f"warm {kind}" in rows:
            print(f"ratios: warm {kind} / echo {rows[f'warm {kind}']['qps'] / echo:.2f}; "
                  f"cold {kind} / raw model {rows[f'cold {kind}']['qps'] / raw:.2f}")


def served_models(args: argparse.Namespace) -> tuple[Path, Path]:
    """(--models, --user-model), else the newest under $HASHREC_MODELS, trained first when
    there are none."""
    from commands.cli import newest_model
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
                          report_pid: bool = False) -> AsyncIterator:
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
              for n in ("VISION", "WORD", "GRAPH", "USER", "RECOMMENDER")}}
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


async def recommend_rows(model: VisionModel, photos: list[bytes], args: argparse.Namespace,
                         mode: str) -> dict[str, dict[str, float]]:
    """The whole stack, as `hashrec serve` runs it in ``mode`` ("processes": one process
    per service; "single": all in this process), under warm and cold Recommend."""
    model_dir, user_dir = served_models(args)
    # The user service loads and verifies the model; the bench only needs its user ids.
    users = json.loads((user_dir / "manifest.json").read_text())["users"][:50]
    async with contextlib.AsyncExitStack() as stack:
        if mode == "processes":
            servers, address = [], await stack.enter_async_context(
                serve_processes(model_dir, user_dir, args.batch))
        else:
            servers, address = await start_stack(model, args.batch, model_dir, user_dir)
        rows = await _recommend_load(address, users, photos, args, mode)
        for server in servers:
            await server.stop()
    return rows


async def _recommend_load(address: str, users: list[str], photos: list[bytes],
                          args: argparse.Namespace, mode: str) -> dict[str, dict[str, float]]:
    from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

    rows = {}
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
        degraded = 0
        reasons: collections.Counter[str] = collections.Counter()

        async def recommend(photo: bytes, i: int) -> None:
            nonlocal degraded
            reply = await stub.Recommend(recommender_pb2.RecommendRequest(
                image=photo, user_id=users[i % len(users)]
                if i % 100 < 100 * args.user_share else "", k=10),
                timeout=60)
            degraded += reply.degraded
            # "word: DEADLINE_EXCEEDED: …" → "word: DEADLINE_EXCEEDED"
            reasons.update(":".join(r.split(":")[:2]) for r in reply.degraded_reasons)

        warm_set = photos[-32:]
        for i, photo in enumerate(warm_set):  # fill the feature cache
            await recommend(photo, i)
        cold_set = photos[32:-32]
        for name, call, budget in (
                (f"warm Recommend ({mode})", lambda i: recommend(warm_set[i % 32], i),
                 args.max_calls),
                (f"cold Recommend ({mode})", lambda i: recommend(cold_set[i], i),
                 len(cold_set))):
            degraded = 0
            reasons.clear()
            rows[name] = await load(call, args.seconds, args.concurrency, budget)
            rows[name]["errors"] += degraded  # a degraded answer counts as an error
            if reasons:
                print(f"{name}: {degraded} degraded answers; reasons "
                      + ", ".join(f"{r} ×{n}" for r, n in reasons.most_common(4)), flush=True)
    return rows


def load_parser(description: str, concurrency: int) -> argparse.ArgumentParser:
    """The options every loopback load bench takes."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--max-calls", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=4, help="the vision service's batch")
    return parser


if __name__ == "__main__":
    parser = load_parser(__doc__, concurrency=64)
    parser.add_argument("--only", choices=("vision", "recommend"))
    parser.add_argument("--models", type=Path, help="default: the newest trained")
    parser.add_argument("--user-model", type=Path, help="default: the newest trained")
    parser.add_argument("--user-share", type=float, default=0.5,
                        help="share of Recommend calls that carry a known user id")
    setup_logging("WARNING")
    asyncio.run(main(parser.parse_args()))
