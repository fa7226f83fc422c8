"""What each service process holds in memory once it serves, and whether it loaded torch.

    python bench/service_memory.py [--models DIR] [--user-model DIR]

Starts `hashrec serve` (one process per service, free ports) on the newest trained models
under $HASHREC_MODELS (trained first when there are none), answers one Recommend for a
stranger and one for a known user so every service has loaded and scored, then prints each
service's resident memory (VmRSS) and whether its process maps libtorch. Only vision is
meant to (tests/test_layers.py guards the others' imports). Loopback only; not in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path

import grpc
from hashrec.v1 import recommender_pb2, recommender_pb2_grpc
from stack import serve_processes, served_models, service_pids, service_rss_kb

from shared.config import data_root, setup_logging
from shared.grpc_server import CHANNEL_OPTIONS


def maps_torch(pid: int) -> bool:
    """Whether the process has libtorch mapped (it imported torch)."""
    with contextlib.suppress(OSError):
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    return False


async def measure(args: argparse.Namespace) -> None:
    model_dir, user_dir = served_models(args)
    user = json.loads((user_dir / "manifest.json").read_text())["users"][0]
    photo = (data_root() / "food" / "images" / "0000008.jpg").read_bytes()
    async with serve_processes(model_dir, user_dir, 4, report_pid=True) as (address, pid):
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
            for user_id in ("", user):
                reply = await stub.Recommend(recommender_pb2.RecommendRequest(
                    image=photo, k=10, user_id=user_id), timeout=60)
                if reply.degraded:
                    raise SystemExit(f"a degraded answer: {list(reply.degraded_reasons)}")
        pids = service_pids(pid)
        rss = {name: kb / 1024 for name, kb in service_rss_kb(pid).items()}
        torch = {name: maps_torch(child) for name, child in pids.items()}
    print(f"models {model_dir.name}, user model {user_dir.name}")
    print(f"{'service':<13}{'VmRSS MB':>10}  torch")
    for name in sorted(pids):
        print(f"{name:<13}{rss[name]:>10.0f}  "
              f"{'yes' if torch[name] else 'no'}")
    print(f"{'all':<13}{sum(rss.values()):>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path)
    parser.add_argument("--user-model", type=Path)
    args = parser.parse_args()
    setup_logging()
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
