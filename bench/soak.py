"""A soak of `hashrec serve` (one process per service): mixed traffic at a set rate for N
minutes, then errors by status, latency per minute and memory growth per process.

    python bench/soak.py [--minutes 10] [--rate 20] [--models DIR] [--user-model DIR]

Not in CI. Traffic, each call drawn at random (seeded): Recommend without a user (40 %),
with a known user (30 %), Feedback (15 %), Retrieve (14 %) and bad input (1 %: a corrupt
photo, a 100,000-character user id, 200 hashtags, or no hashtag). A bad input must be
answered INVALID_ARGUMENT; any other status is an error, as is any non-OK answer to a good
call. Loopback only. Prints, per minute, calls, errors, p50 and p99 of the good calls and
the services' resident memory; at the end the p99 drift (last minute against the first)
and each process's RSS growth from the end of the first minute. Aims: 0 errors, p99 drift
under 20 %, RSS growth under 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import time
from pathlib import Path

import grpc
import numpy as np
from hashrec.v1 import recommender_pb2, recommender_pb2_grpc, user_pb2
from stack import serve_processes, served_models, service_rss_kb

from shared.config import data_root, setup_logging
from shared.grpc_server import CHANNEL_OPTIONS

KINDS = (("recommend", 0.40), ("recommend_user", 0.30), ("feedback", 0.15),
         ("retrieve", 0.14), ("bad", 0.01))


async def soak(args: argparse.Namespace) -> None:
    model_dir, user_dir = served_models(args)
    manifest = json.loads((user_dir / "manifest.json").read_text())
    users, vocabulary = manifest["users"][:50], manifest["vocabulary"]
    photos = [p.read_bytes() for p in sorted((data_root() / "food" / "images").glob("*.jpg"))]
    rng = random.Random(args.seed)
    minutes: dict[int, dict[str, list]] = collections.defaultdict(
        lambda: {"latency": [], "errors": [], "calls": [0]})
    statuses: collections.Counter = collections.Counter()
    rss: dict[int, dict[str, int]] = {}
    async with contextlib.AsyncExitStack() as stack:
        address, serve_pid = await stack.enter_async_context(
            serve_processes(model_dir, user_dir, args.batch, report_pid=True))
        channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)

        async def one(kind: str, minute: int) -> None:
            photo = rng.choice(photos)
            bad = None
            if kind == "bad":
                bad = rng.choice(("corrupt", "user", "many", "none"))
            started = time.perf_counter()
            try:
                if kind in ("recommend", "recommend_user") or bad in ("corrupt", "user"):
                    await stub.Recommend(recommender_pb2.RecommendRequest(
                        image=photo[: len(photo) // 3] if bad == "corrupt" else photo,
                        user_id="u" * 100_000 if bad == "user" else
                        rng.choice(users) if kind == "recommend_user" else "", k=10),
                        timeout=30)
                elif kind == "feedback" or bad in ("many", "none"):
                    tags = ([f"t{i}" for i in range(200)] if bad == "many" else
                            [] if bad == "none" else rng.sample(vocabulary, 2))
                    await stub.Feedback(recommender_pb2.FeedbackRequest(
                        image=photo, user_id=f"soak-{rng.randrange(200)}",
                        hashtags=tags), timeout=30)
                else:
                    await stub.Retrieve(user_pb2.RetrieveRequest(
                        hashtag=rng.choice(vocabulary), user_id=rng.choice(users), k=10),
                        timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            seconds = time.perf_counter() - started
            statuses[(kind, code)] += 1
            row = minutes[minute]
            row["calls"][0] += 1
            expected = "INVALID_ARGUMENT" if kind == "bad" else "OK"
            if code != expected:
                row["errors"].append((kind, code))
            elif kind != "bad":
                row["latency"].append(seconds)

        start = time.monotonic()
        tasks: set[asyncio.Task] = set()
        n = 0
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            minute = int(elapsed // 60)
            if minute not in rss and elapsed - minute * 60 > 55:  # near each minute's end
                rss[minute] = service_rss_kb(serve_pid)
            kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
            task = asyncio.create_task(one(kind, minute))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n / args.rate - time.monotonic()))
        await asyncio.gather(*tasks)
    report(minutes, statuses, rss, args)


def report(minutes: dict, statuses: collections.Counter, rss: dict[int, dict[str, int]],
           args: argparse.Namespace) -> None:
    print(f"soak: {args.minutes} min at {args.rate} calls/s, one process per service")
    print(f"{'minute':>6}{'calls':>8}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}  RSS MB by service")
    p99s = []
    for minute in sorted(minutes):
        row = minutes[minute]
        latency = np.array(row["latency"]) * 1000
        p50, p99 = (np.percentile(latency, 50), np.percentile(latency, 99)) if len(latency) \
            else (float("nan"), float("nan"))
        p99s.append(p99)
        memory = " ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(rss.get(minute, {}).items()))
        print(f"{minute + 1:>6}{row['calls'][0]:>8}{len(row['errors']):>8}{p50:>9.1f}"
              f"{p99:>9.1f}  {memory}")
    print("answers by call and status: " + ", ".join(
        f"{kind} {code} {count}" for (kind, code), count in sorted(statuses.items())))
    errors = sum(len(row["errors"]) for row in minutes.values())
    print(f"errors: {errors}")
    if len(p99s) >= 2:
        print(f"p99 drift, last minute against the first: {p99s[-1] / p99s[0] - 1:+.1%}")
    if len(rss) >= 2:
        first, last = rss[min(rss)], rss[max(rss)]
        print("RSS growth from minute 1 to the last: " + ", ".join(
            f"{name} {last[name] / first[name] - 1:+.1%}" for name in sorted(first)
            if name in last))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="calls a second")
    parser.add_argument("--batch", type=int, default=4, help="the vision service's batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, help="default: the newest trained")
    parser.add_argument("--user-model", type=Path, help="default: the newest trained")
    setup_logging("WARNING")
    asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    main()
