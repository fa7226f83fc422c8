"""The HTTP gateway against gRPC, warm, on the same stack in the same run.

    python bench/gateway.py [--seconds 10] [--concurrency 32] [--runs 3] [--gateway-in-process]

The five services as `hashrec serve` runs them (one process), the gateway in front of the
recommender in a process of its own (as deploy/base/gateway.yaml runs it; with
--gateway-in-process it shares the services' process and GIL, as `hashrec serve` starts
it), and the load generator in a third process, so that neither client's own work
(an HTTP client in Python costs more than gRPC's C core) is charged to the server. Warm
photos (their features cached) go 1) straight to RecommenderService.Recommend over gRPC,
2) to POST /api/recommend as multipart uploads (a lean asyncio HTTP/1.1 client, one
kept-alive connection a worker, the forms encoded beforehand), with the same concurrency
and no user. Prints QPS, p50 / p95 / p99 and errors (HTTP status >= 400 or a
gRPC error) for both, each the median of --runs runs (alternating), and the ratio HTTP /
gRPC QPS (the aim: 0.8 or better).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the shared load loop
from serving import load, load_parser
from stack import served_models, start_stack

from services.vision.model import VisionModel
from shared.config import data_root, setup_logging
from shared.grpc_server import CHANNEL_OPTIONS


def warm_photos() -> list[bytes]:
    return [p.read_bytes() for p in sorted((data_root() / "food" / "images").glob("*.jpg"))
            [:32]]


async def client(args: argparse.Namespace) -> dict[str, float]:
    """The load generator's process: one row against ``--client grpc:ADDRESS|http:URL``."""
    from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

    photos = warm_photos()
    kind, target = args.client.split(":", 1)
    if kind == "grpc":
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)

            async def over_grpc(i: int) -> None:
                await stub.Recommend(recommender_pb2.RecommendRequest(
                    image=photos[i % len(photos)], k=10), timeout=60)

            await over_grpc(0)
            return await load(over_grpc, args.seconds, args.concurrency, args.max_calls)

    return await load(http_calls(target, photos, args.concurrency), args.seconds,
                      args.concurrency, args.max_calls, (HttpError, OSError))


class HttpError(Exception):
    pass


def multipart(photo: bytes, boundary: str = "hashrec-bench-boundary") -> tuple[bytes, str]:
    """The form the page sends (k=10 and the photo), encoded once: (body, content type)."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n10\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() \
        + photo + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def http_calls(url: str, photos: list[bytes], connections: int):
    """POST /api/recommend over ``connections`` kept-alive HTTP/1.1 connections, one a
    worker, the requests encoded before the clock starts. A lean client of asyncio
    streams: httpx's pool cost more CPU a request than the gateway did, so the row
    measured the client."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    requests = []
    for photo in photos:
        body, content_type = multipart(photo)
        requests.append(f"POST /api/recommend HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                        f"\r\n".encode() + body)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def call(i: int) -> None:
        reader, writer = idle.pop() if idle else await asyncio.open_connection(host, int(port))
        writer.write(requests[i % len(requests)])
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        idle.append((reader, writer))
        if status >= 400:
            raise HttpError(status)

    return call


async def row(args: argparse.Namespace, target: str) -> dict[str, float]:
    """One row, measured by a load generator in its own process."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", target, "--seconds", str(args.seconds),
        "--concurrency", str(args.concurrency), "--max-calls", str(args.max_calls),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"load generator against {target} failed ({child.returncode})")
    return json.loads(out.decode().strip().splitlines()[-1])


async def ready(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit(f"the gateway at {url} never became ready")


async def main(args: argparse.Namespace) -> None:
    from hashrec.v1 import recommender_pb2, recommender_pb2_grpc

    args.models = args.user_model = None  # the newest trained
    servers, address = await start_stack(VisionModel(device="cpu"), args.batch,
                                         *served_models(args))
    url = f"http://127.0.0.1:{args.http_port}"
    gateway = process = None
    accounts = tempfile.TemporaryDirectory()  # anonymous calls: an empty accounts file
    if args.gateway_in_process:
        from services.gateway.server import Settings
        from services.gateway.server import serve as serve_gateway

        gateway = await serve_gateway("127.0.0.1", args.http_port, Settings(
            recommender=address, photo_root=data_root(), rate_limits="off",
            accounts_path=Path(accounts.name) / "accounts.sqlite"))
    else:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.gateway.server"],
            env={**os.environ, "HASHREC_RECOMMENDER_TARGET": address,
                 "HASHREC_GATEWAY_PORT": str(args.http_port),
                 "HASHREC_PHOTO_ROOT": str(data_root()), "HASHREC_LOG_LEVEL": "WARNING",
                 # one client from one address is the load: no per-address limit here
                 "HASHREC_GATEWAY_RATE_LIMITS": "off",
                 "HASHREC_ACCOUNTS_DB": str(Path(accounts.name) / "accounts.sqlite")})
    try:
        await ready(url)
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
            for photo in warm_photos():  # warm: every photo's scores cached
                await stub.Recommend(recommender_pb2.RecommendRequest(image=photo, k=10),
                                     timeout=60)
        runs: dict[str, list[dict[str, float]]] = {"gRPC Recommend": [],
                                                   "POST /api/recommend": []}
        for _ in range(args.runs):  # alternating, so drift in the machine hits both
            runs["gRPC Recommend"].append(await row(args, f"grpc:{address}"))
            runs["POST /api/recommend"].append(await row(args, f"http:{url}"))
        # each row: the run of median QPS
        rows = {name: sorted(results, key=lambda r: r["qps"])[len(results) // 2]
                for name, results in runs.items()}
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        if gateway is not None:
            gateway.should_exit = True
            await gateway.task
        for server in servers:
            await server.stop()
    where = "sharing the services' process" if args.gateway_in_process else \
        "in its own process"
    print(f"loopback, {args.concurrency} requests in flight, up to {args.seconds:.0f} s "
          f"a run, the median of {args.runs} runs a row, 32 warm photos, no user; the "
          f"gateway {where}; load from a third process")
    print(f"{'':<22}{'calls':>8}{'QPS':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}")
    for name, result in rows.items():
        print(f"{name:<22}{result['calls']:>8.0f}{result['qps']:>9.1f}"
              f"{result['p50']:>9.1f}{result['p95']:>9.1f}{result['p99']:>9.1f}"
              f"{result['errors']:>8.0f}")
    ratios = sorted(http["qps"] / grpc_row["qps"] for http, grpc_row in zip(
        runs["POST /api/recommend"], runs["gRPC Recommend"], strict=True))
    ratio = rows["POST /api/recommend"]["qps"] / rows["gRPC Recommend"]["qps"]
    print(f"ratio: HTTP / gRPC QPS {ratio:.2f}, median of {args.runs} runs each (aim 0.8); "
          f"run by run {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    parser = load_parser(__doc__, concurrency=32)
    parser.add_argument("--http-port", type=int, default=18080)
    parser.add_argument("--runs", type=int, default=3, help="runs a row; the median counts")
    parser.add_argument("--gateway-in-process", action="store_true",
                        help="the gateway on the services' event loop, as `hashrec serve`")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # the load generator's process
    arguments = parser.parse_args()
    setup_logging("WARNING")
    if arguments.client:
        print(json.dumps(asyncio.run(client(arguments))))
    else:
        asyncio.run(main(arguments))
