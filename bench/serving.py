"""Load on the whole stack over loopback gRPC: the curve of QPS and latency against calls
in flight, next to a bare echo server and the raw vision model in the same run.

    python bench/serving.py [--seconds 10] [--concurrency 1,4,16,64,256] [--deadline 10]
        [--mode processes|single] [--only vision]

`hashrec serve`'s services (one process per service, its default; or all five in this
process with --mode single) on the newest trained models under $HASHREC_MODELS (trained
first when there are none; or --models / --user-model). At each concurrency, two rows:
warm (32 photos whose evidence is cached; half the calls with a known user, --user-share)
and cold (a photo no service has seen, every call: a shipped photo made new by a JPEG
comment, so it misses every cache and is decoded and embedded again). Every call carries
a deadline (--deadline); a refused call (RESOURCE_EXHAUSTED with a retry hint) is shed,
and its client waits the hint before its next call, as a well-behaved client does.

For each row: whole answers/s, p50 / p99 of admitted calls, degraded answers (%), shed
calls (%) and their p99 refusal time, errors (any other failure, a missed deadline
included). Then the ratios cold / raw model images/s (at the vision batch size) and warm /
echo, and for the overload row the admitted p99 against the 64-in-flight one. Writes
out/serving.json and docs/serving.png (QPS and p99 against calls in flight).

Every load loop is bounded in time and count and targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import torch
from hashrec.v1 import vision_pb2, vision_pb2_grpc

from services.vision.model import VisionModel, decode_image, preprocess
from services.vision.server import serve
from shared.admission import retry_after_seconds
from shared.batching import usable_cores
from shared.config import data_root, setup_logging
from shared.grpc_server import CHANNEL_OPTIONS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the stack helpers
from stack import (
    free_port,
    full_collections,
    lag_p99,
    loop_lag_buckets,
    serve_processes,
    served_models,
    service_cpu_seconds,
    start_stack,
)

ECHO_METHOD = "/bench.Echo/Echo"
T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


class Shed(Exception):  # noqa: N818 - an outcome, not a fault
    """A call refused at capacity, with the server's retry hint in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"shed; retry after {retry_after} s")
        self.retry_after = retry_after


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


async def refused_as_shed(call: Awaitable[T]) -> T:
    """The call's reply; a refusal at capacity (RESOURCE_EXHAUSTED with a retry hint)
    raised as ``Shed``."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        retry = retry_after_seconds(error)
        if retry is None:
            raise
        raise Shed(retry) from None


async def load(call: Callable[[int], Awaitable[object]], seconds: float, concurrency: int,
               max_calls: int, failures: tuple[type[BaseException], ...] = (
                   grpc.aio.AioRpcError,)) -> dict[str, float]:
    """``concurrency`` workers call ``call(i)`` until the time or the call budget is spent.
    A call that returns True was answered degraded; one that raises ``Shed`` was refused
    (its worker waits the hint, within the time left); one that raises ``failures`` is an
    error."""
    latencies: list[float] = []
    refusals: list[float] = []
    errors = degraded = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors, degraded, issued
        while time.perf_counter() < deadline and issued < max_calls:
            number = issued
            issued += 1
            started = time.perf_counter()
            try:
                degraded += bool(await call(number))
                latencies.append(time.perf_counter() - started)
            except Shed as shed:
                refusals.append(time.perf_counter() - started)
                await asyncio.sleep(min(shed.retry_after, max(0.0, deadline
                                                              - time.perf_counter())))
            except failures:
                errors += 1

    lags: list[float] = []

    async def watch() -> None:
        """How late this process's own event loop wakes: what the client adds to every
        latency it measures."""
        while time.perf_counter() < deadline:
            asked = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - asked - 0.005)

    started = time.perf_counter()
    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    watcher.cancel()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    refused_ms = np.array(refusals) * 1000 if refusals else np.zeros(1)
    calls = len(latencies) + len(refusals) + errors
    return {"concurrency": concurrency, "calls": len(latencies),
            "qps": (len(latencies) - degraded) / elapsed, "errors": errors,
            "degraded": degraded, "degraded_pct": 100 * degraded / max(len(latencies), 1),
            "shed": len(refusals), "shed_pct": 100 * len(refusals) / max(calls, 1),
            "shed_p99": float(np.percentile(refused_ms, 99)),
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
            "client_lag_p99": float(np.percentile(np.array(lags or [0.0]) * 1000, 99))}


def new_photo(jpeg: bytes, number: int) -> bytes:
    """``jpeg`` made a photo no cache has seen: a comment segment (COM) with ``number``
    right after the start-of-image marker. The pixels are the same; the bytes, and so
    every sha256-keyed cache entry, are new."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    text = f"hashrec bench {number}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def raw_images_per_second(model: VisionModel, photos: list[bytes], batch: int,
                          seconds: float = 5.0) -> tuple[float, float]:
    """The vision model alone, in this process, on batches of ``batch`` decoded photos:
    (images/s, CPU seconds an image, all of the model's threads together)."""
    tensors = torch.stack([preprocess(decode_image(p)) for p in photos[:batch]])
    model.embed_tensors(tensors)
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        model.embed_tensors(tensors)
        done += batch
    return done / (time.perf_counter() - started), (time.process_time() - cpu) / done


def decode_cpu_seconds(photos: list[bytes], count: int = 128) -> float:
    """CPU seconds to decode and preprocess one photo (what the service does before the
    model and the raw model is spared)."""
    cpu = time.process_time()
    for photo in photos[:count]:
        preprocess(decode_image(photo))
    return (time.process_time() - cpu) / min(count, len(photos))


def cold_ceiling(model_cpu: float, decode_cpu: float, hop_cpu: float, hops: float,
                 cores: int) -> float:
    """Cold answers/s the stack could reach if word, graph, user and the recommender's own
    scoring cost nothing: ``cores`` busy with the model, the decoding and ``hops`` gRPC
    calls an answer at ``hop_cpu`` each (client and server; the echo's, a lower bound:
    its payload is 64 bytes, a photo's is tens of kilobytes)."""
    return cores / (model_cpu + decode_cpu + hops * hop_cpu)


async def main(args: argparse.Namespace) -> None:
    root = data_root()
    photos = [p.read_bytes() for p in
              sorted((root / "instagram" / "images").rglob("*.jpg"))
              + sorted((root / "food" / "images").glob("*.jpg"))]
    model = VisionModel(device="cpu")
    server, address = await echo_server()
    async with grpc.aio.insecure_channel(address) as channel:
        echo = channel.unary_unary(ECHO_METHOD)
        cpu = time.process_time()
        reference = await load(lambda i: echo(b"x" * 64), args.seconds, 64, args.max_calls)
        # client and server share this process: the CPU of one whole hop
        reference["cpu_ms_per_call"] = 1000 * (time.process_time() - cpu) / reference["calls"]
    await server.stop(None)
    raw, model_cpu = raw_images_per_second(model, photos, args.batch)
    if args.only == "vision":
        rows = await vision_rows(model, photos, args)
    else:
        rows = await recommend_rows(model, photos, args, args.mode)
    # Measured again after the rows, the faster of the two counts: this machine's speed
    # drifts, and the ratios should not flatter the stack.
    again, again_cpu = raw_images_per_second(model, photos, args.batch)
    raw, model_cpu = max(raw, again), min(model_cpu, again_cpu)
    # client -> recommender -> vision, word, graph; for the share with a user, two calls to
    # the user service (a new photo is routed by where they post before they score it)
    hops = 1.0 if args.only == "vision" else 4.0 + 2.0 * args.user_share
    cores, decode = usable_cores(), decode_cpu_seconds(photos)
    ceiling = {"cores": cores, "model_cpu_ms": 1000 * model_cpu,
               "decode_cpu_ms": 1000 * decode, "hop_cpu_ms": reference["cpu_ms_per_call"],
               "hops": hops, "answers_per_second": cold_ceiling(
                   model_cpu, decode, reference["cpu_ms_per_call"] / 1000, hops, cores)}
    report(rows, reference, raw, args, ceiling)


async def vision_rows(model: VisionModel, photos: list[bytes], args: argparse.Namespace,
                      ) -> dict[str, dict[str, float]]:
    """VisionService.Embed alone, warm and cold, at each concurrency."""
    rows = {}
    vision = await serve("127.0.0.1", 0, model, max_batch=args.batch)
    async with grpc.aio.insecure_channel(vision.address, options=CHANNEL_OPTIONS) as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        warm_set = photos[:32]
        for photo in warm_set:  # fill the cache
            await stub.Embed(vision_pb2.EmbedRequest(image=photo))
        fresh = iter(range(10**9))

        async def embed(photo: bytes) -> bool:
            await refused_as_shed(stub.Embed(vision_pb2.EmbedRequest(image=photo),
                                             timeout=args.deadline))
            return False

        for concurrency in args.concurrency:
            rows[f"warm Embed @{concurrency}"] = await load(
                lambda i: embed(warm_set[i % 32]), args.seconds, concurrency, args.max_calls)
            rows[f"cold Embed @{concurrency}"] = await load(
                lambda i: embed(new_photo(photos[i % len(photos)], next(fresh))),
                args.seconds, concurrency, args.max_calls)
    await vision.stop()
    return rows


def report(rows: dict[str, dict[str, float]], echo: dict[str, float], raw: float,
           args: argparse.Namespace, ceiling: dict[str, float]) -> None:
    print(f"loopback, up to {args.seconds:.0f} s a row, deadline {args.deadline:.0f} s a "
          f"call; vision max batch {args.batch}; mode {args.mode}")
    width = max(26, *(len(name) + 2 for name in rows))
    print(f"{'':<{width}}{'calls':>7}{'QPS':>8}{'p50 ms':>8}{'p99 ms':>8}{'degr %':>8}"
          f"{'shed %':>8}{'shed p99':>9}{'errors':>7}")
    print(f"{'echo @64 (reference)':<{width}}{echo['calls']:>7.0f}{echo['qps']:>8.1f}"
          f"{echo['p50']:>8.1f}{echo['p99']:>8.1f}")
    for name, row in rows.items():
        print(f"{name:<{width}}{row['calls']:>7.0f}{row['qps']:>8.1f}{row['p50']:>8.1f}"
              f"{row['p99']:>8.1f}{row['degraded_pct']:>8.1f}{row['shed_pct']:>8.1f}"
              f"{row['shed_p99'] if row['shed'] else 0:>9.1f}{row['errors']:>7.0f}")
    print(f"raw model, batch {args.batch}, in-process: {raw:.1f} images/s (the faster of a "
          "run before and after the rows)")
    print(f"cold ceiling, if all scoring were free: {ceiling['cores']} cores / (model "
          f"{ceiling['model_cpu_ms']:.1f} + decoding {ceiling['decode_cpu_ms']:.1f} + "
          f"{ceiling['hops']:g} gRPC hops × {ceiling['hop_cpu_ms']:.2f} ms of CPU) = "
          f"{ceiling['answers_per_second']:.1f} answers/s = "
          f"{ceiling['answers_per_second'] / raw:.2f}x the raw model")
    for name, row in rows.items():
        if "cpu_ms_per_answer" in row:
            gc = row.get("server_full_gc") or {"count": 0, "mean_ms": 0.0}
            print(f"{name}: CPU ms an answer " + ", ".join(
                f"{service} {ms:.1f}" for service, ms in row["cpu_ms_per_answer"].items())
                + f"; {row['cpu_utilisation']:.2f} cores busy; the recommender's full "
                f"collections {gc['count']:.0f}, {gc['mean_ms']:.0f} ms each")
    kind = "Embed" if args.only == "vision" else "Recommend"
    ratios = {}
    for concurrency in args.concurrency:
        warm, cold = rows[f"warm {kind} @{concurrency}"], rows[f"cold {kind} @{concurrency}"]
        ratios[concurrency] = {"warm_vs_echo": warm["qps"] / echo["qps"],
                               "cold_vs_raw": cold["qps"] / raw}
        print(f"@{concurrency:<4} ratios: warm / echo {ratios[concurrency]['warm_vs_echo']:.2f}"
              f"; cold / raw model {ratios[concurrency]['cold_vs_raw']:.2f}")
    if 64 in args.concurrency and max(args.concurrency) > 64:
        top = max(args.concurrency)
        for temperature in ("cold", "warm"):
            over, base = rows[f"{temperature} {kind} @{top}"], rows[f"{temperature} {kind} @64"]
            print(f"overload @{top}, {temperature}: admitted p99 {over['p99']:.0f} ms = "
                  f"{over['p99'] / base['p99']:.2f}x the p99 @64; refused in p99 "
                  f"{over['shed_p99']:.1f} ms; slowest admitted {over['max']:.0f} ms "
                  f"(deadline {args.deadline * 1000:.0f}); event loops woke late by p99 "
                  f"{over['client_lag_p99']:.0f} ms (the client) and ≤ "
                  f"{over.get('server_lag_p99') or 0:.0f} ms (the recommender)")
            calm = over.get("probe")
            if calm:
                print(f"  a calm client beside it (its own process, one call every 20 ms): "
                      f"{calm['refused']} refused in p50 {calm['refused_p50']:.1f} / p99 "
                      f"{calm['refused_p99']:.1f} ms, {calm['admitted']} admitted in p50 "
                      f"{calm['admitted_p50']:.0f} / p99 {calm['admitted_p99']:.0f} ms, "
                      f"{calm['errors']} errors")
    out = REPO / "out"
    out.mkdir(exist_ok=True)
    (out / "serving.json").write_text(json.dumps({
        "rows": rows, "echo": echo, "raw_images_per_second": raw, "ratios": ratios,
        "cold_ceiling": ceiling,
        "seconds": args.seconds, "deadline": args.deadline, "batch": args.batch,
        "mode": args.mode, "kind": kind}, indent=1))
    plot(rows, kind, args.concurrency, echo["qps"], raw,
         REPO / "docs" / ("serving.png" if kind == "Recommend" else "serving-vision.png"))


def plot(rows: dict[str, dict[str, float]], kind: str, levels: list[int], echo: float,
         raw: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for temperature, colour in (("warm", "tab:orange"), ("cold", "tab:blue")):
        series = [rows[f"{temperature} {kind} @{c}"] for c in levels]
        left.plot(levels, [r["qps"] for r in series], "o-", color=colour,
                  label=f"{temperature}: whole answers/s")
        # refused a second (the row's seconds from its whole answers), where any were
        left.plot(levels, [r["shed"] * r["qps"] / max(r["calls"] - r["degraded"], 1)
                           if r["shed"] else float("nan") for r in series], "x", color=colour,
                  label=f"{temperature}: refused/s")
        right.plot(levels, [r["p99"] for r in series], "o-", color=colour,
                   label=f"{temperature}: admitted p99")
    left.axhline(raw, color="grey", linestyle="--", label=f"raw model {raw:.0f} images/s")
    left.set(xscale="log", yscale="log", xlabel="calls in flight", ylabel="per second",
             title=f"{kind} throughput (echo {echo:.0f}/s)")
    right.set(xscale="log", yscale="log", xlabel="calls in flight", ylabel="ms",
              title=f"{kind} p99 latency")
    for axis in (left, right):
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path.relative_to(REPO)} and out/serving.json")


async def recommend_rows(model: VisionModel, photos: list[bytes], args: argparse.Namespace,
                         mode: str) -> dict[str, dict[str, float]]:
    """The whole stack, as `hashrec serve` runs it in ``mode`` ("processes": one process
    per service; "single": all in this process), under warm and cold Recommend at each
    concurrency."""
    model_dir, user_dir = served_models(args)
    # The user service loads and verifies the model; the bench only needs its user ids.
    users = json.loads((user_dir / "manifest.json").read_text())["users"][:50]
    async with contextlib.AsyncExitStack() as stack:
        supervisor = metrics = None
        if mode == "processes":
            servers = []
            metrics = free_port()
            address, supervisor = await stack.enter_async_context(
                serve_processes(model_dir, user_dir, args.batch, report_pid=True,
                                metrics_port=metrics))
        else:
            servers, address = await start_stack(model, args.batch, model_dir, user_dir)
        rows = await _recommend_load(address, users, photos, args, supervisor, metrics)
        for server in servers:
            await server.stop()
    return rows


async def _recommend_load(address: str, users: list[str], photos: list[bytes],
                          args: argparse.Namespace, supervisor: int | None = None,
                          metrics: int | None = None) -> dict[str, dict[str, float]]:
    """The rows; each with the CPU milliseconds each service (and the client) spent an
    answer, where the services are `hashrec serve`'s children (``supervisor``), and how
    late the recommender's event loop ran (from its metrics on port ``metrics``)."""
    import collections

    from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

    rows = {}
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
        reasons: collections.Counter[str] = collections.Counter()

        async def recommend(photo: bytes, i: int) -> bool:
            try:
                reply = await refused_as_shed(stub.Recommend(recommender_pb2.RecommendRequest(
                    image=photo, user_id=users[i % len(users)]
                    if i % 100 < 100 * args.user_share else "", k=10),
                    timeout=args.deadline))
            except grpc.aio.AioRpcError as error:
                reasons[f"error: {error.code().name}"] += 1
                raise
            reasons.update(reply.degraded_reasons)  # "word: deadline exceeded"
            return reply.degraded

        warm_set = photos[-32:]
        # Fill the caches with every (photo, caller) pair the warm rows send: a user's
        # photo is routed by where they post, another photo to the caches than the
        # stranger's. The pairs repeat every lcm(32, users, 100) calls (100: --user-share).
        pairs = math.lcm(len(warm_set), len(users), 100)
        for start in range(0, pairs, 16):
            await asyncio.gather(*(recommend(warm_set[i % len(warm_set)], i)
                                   for i in range(start, min(start + 16, pairs))))
        fresh = iter(range(10**9))
        for concurrency in args.concurrency:
            for name, call in (
                    (f"warm Recommend @{concurrency}",
                     lambda i: recommend(warm_set[i % len(warm_set)], i)),
                    (f"cold Recommend @{concurrency}", lambda i: recommend(
                        new_photo(photos[i % len(photos)], next(fresh)), i))):
                reasons.clear()
                before, started = service_cpu_seconds(supervisor), time.perf_counter()
                lag_before, gc_before = loop_lag_buckets(metrics), full_collections(metrics)
                # past the admission limit, a calm client beside the load: what a refusal
                # costs a caller whose own event loop is not the one overloaded
                calm = (asyncio.ensure_future(probe(address, name.split()[0], args.seconds))
                        if concurrency > 64 else None)
                rows[name] = await load(call, args.seconds, concurrency, args.max_calls)
                # the row's figures end with its load, not with the calm client's last call
                after, elapsed = service_cpu_seconds(supervisor), time.perf_counter() - started
                rows[name]["server_lag_p99"] = lag_p99(lag_before, loop_lag_buckets(metrics))
                full, paused = (now - then for now, then in zip(
                    full_collections(metrics), gc_before, strict=True))
                rows[name]["server_full_gc"] = {"count": full,
                                                "mean_ms": 1000 * paused / max(full, 1)}
                if calm is not None:
                    rows[name]["probe"] = await calm
                answered = max(rows[name]["calls"], 1)
                rows[name]["cpu_ms_per_answer"] = {
                    service: round(1000 * (after[service] - before.get(service, 0.0))
                                   / answered, 2) for service in after}
                rows[name]["cpu_utilisation"] = round(sum(
                    after[s] - before.get(s, 0.0) for s in after) / elapsed, 2)
                if reasons:
                    print(f"{name}: " + ", ".join(f"{r} ×{n}"
                                                  for r, n in reasons.most_common(4)),
                          flush=True)
    return rows


async def probe(address: str, kind: str, seconds: float) -> dict[str, float]:
    """``probe_calls`` in a process of its own for the next ``seconds`` (the load's, by
    the wall clock: the process takes a while to start): refused and admitted calls with
    their p50 / p99 ms."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--probe", address, "--probe-kind", kind, "--until",
        str(time.time() + seconds), stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    return json.loads(out)


def probe_calls(address: str, kind: str, until: float, every: float = 0.02) -> None:
    """One stranger's Recommend at a time, one every ``every`` seconds until the time
    ``until``, of a warm photo or a photo made new (``kind``), on a blocking channel;
    prints the latencies as JSON."""
    import grpc as blocking
    from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

    root = data_root()
    photos = [p.read_bytes() for p in sorted((root / "food" / "images").glob("*.jpg"))]
    timings: dict[str, list[float]] = {"refused": [], "admitted": [], "errors": []}
    with blocking.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
        number = 0
        while time.time() < until:
            image = photos[-32:][number % 32] if kind == "warm" else new_photo(
                photos[number % len(photos)], 10**9 + number)
            started = time.perf_counter()
            try:
                stub.Recommend(recommender_pb2.RecommendRequest(image=image, k=10),
                               timeout=10)
                timings["admitted"].append(time.perf_counter() - started)
            except blocking.RpcError as error:
                refused = error.code() == blocking.StatusCode.RESOURCE_EXHAUSTED
                timings["refused" if refused else "errors"].append(
                    time.perf_counter() - started)
            number += 1
            time.sleep(every)
    print(json.dumps({f"{what}_{stat}": float(np.percentile(np.array(ms) * 1000, q))
                      if ms else 0.0 for what, ms in timings.items() if what != "errors"
                      for stat, q in (("p50", 50), ("p99", 99))}
                     | {what: len(ms) for what, ms in timings.items()}))


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
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="a row")
    parser.add_argument("--concurrency", default=[1, 4, 16, 64, 256],
                        type=lambda text: [int(c) for c in text.split(",")],
                        help="calls in flight, comma-separated: one pair of rows each")
    parser.add_argument("--max-calls", type=int, default=20_000, help="a row")
    parser.add_argument("--batch", type=int, default=4, help="the vision service's batch")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds a call")
    parser.add_argument("--mode", choices=("processes", "single"), default="processes")
    parser.add_argument("--only", choices=("vision",))
    parser.add_argument("--models", type=Path, help="default: the newest trained")
    parser.add_argument("--user-model", type=Path, help="default: the newest trained")
    parser.add_argument("--user-share", type=float, default=0.5,
                        help="share of Recommend calls that carry a known user id")
    parser.add_argument("--probe", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--probe-kind", default="warm", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    setup_logging("WARNING")
    options = parser.parse_args()
    if options.probe:  # the calm client of an overload row (``probe``)
        probe_calls(options.probe, options.probe_kind, options.until)
    else:
        asyncio.run(main(options))
