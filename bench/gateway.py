"""The HTTP gateway against gRPC, warm, on the same stack in the same run.

    python bench/gateway.py [--seconds 10] [--concurrency 32]

The five services as `hashrec serve` runs them and the gateway in front of the
recommender, all on loopback. Warm photos (their features cached) go 1) straight to
RecommenderService.Recommend over gRPC, 2) to POST /api/recommend as multipart uploads
(httpx, one connection pool), with the same concurrency and no user. Prints QPS, p50 /
p95 / p99 and errors (HTTP status >= 400 or a gRPC error) for both, and the ratio
HTTP / gRPC QPS (the aim: 0.8 or better).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the shared load loop
from serving import load, start_stack

from services.gateway.server import Settings
from services.gateway.server import serve as serve_gateway
from services.vision.model import VisionModel
from shared.config import data_root, setup_logging
from shared.grpc_server import CHANNEL_OPTIONS


async def main(args: argparse.Namespace) -> None:
    from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

    photos = [p.read_bytes() for p in sorted((data_root() / "food" / "images").glob("*.jpg"))
              [:32]]
    servers, address, _ = await start_stack(VisionModel(device="cpu"), args.batch)
    gateway = await serve_gateway("127.0.0.1", args.http_port, Settings(
        recommender=address, photo_root=data_root()))
    url = f"http://127.0.0.1:{args.http_port}"
    rows = {}
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)

        async def over_grpc(i: int) -> None:
            await stub.Recommend(recommender_pb2.RecommendRequest(
                image=photos[i % len(photos)], k=10), timeout=60)

        for i in range(len(photos)):  # warm: every photo's scores cached
            await over_grpc(i)
        rows["gRPC Recommend"] = await load(over_grpc, args.seconds, args.concurrency,
                                            args.max_calls)
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        class HttpError(Exception):
            pass

        async def over_http(i: int) -> None:
            response = await client.post("/api/recommend", data={"k": "10"}, files={
                "image": ("photo.jpg", photos[i % len(photos)], "image/jpeg")})
            if response.status_code >= 400:
                raise HttpError(response.status_code)

        await over_http(0)
        rows["POST /api/recommend"] = await load(over_http, args.seconds, args.concurrency,
                                                 args.max_calls, (HttpError, httpx.HTTPError))
    gateway.should_exit = True
    await gateway.task
    for server in servers:
        await server.stop()
    print(f"loopback, {args.concurrency} requests in flight, up to {args.seconds:.0f} s "
          f"each, {len(photos)} warm photos, no user")
    print(f"{'':<22}{'calls':>8}{'QPS':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}")
    for name, row in rows.items():
        print(f"{name:<22}{row['calls']:>8.0f}{row['qps']:>9.1f}{row['p50']:>9.1f}"
              f"{row['p95']:>9.1f}{row['p99']:>9.1f}{row['errors']:>8.0f}")
    ratio = rows["POST /api/recommend"]["qps"] / rows["gRPC Recommend"]["qps"]
    print(f"ratio: HTTP / gRPC QPS {ratio:.2f} (aim 0.8)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-calls", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--http-port", type=int, default=18080)
    setup_logging("WARNING")
    asyncio.run(main(parser.parse_args()))
