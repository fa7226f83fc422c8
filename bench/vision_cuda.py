"""The vision service on a CUDA device: the model's photos/s at batch 1-64 in fp32 and fp16
(both TorchScript-frozen, channels_last), how far fp16's answers are from fp32's, decoding's
cost on the CPU, and the service over loopback gRPC under cold load with its batching.

    python bench/vision_cuda.py [--photos DIR] [--seconds 3] [--out FILE.json]

DIR holds JPEG photos (default: the food set's). Cold calls send a photo no cache has seen
(bench/serving.py's new_photo). Prints a table and writes the figures as JSON. Needs a CUDA
device; every load loop is bounded and targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the shared load loop
from serving import load, new_photo, refused_as_shed

from services.vision.model import VisionModel, decode_image, preprocess
from services.vision.server import serve
from shared.config import data_root, setup_logging
from shared.grpc_server import CHANNEL_OPTIONS

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def images_per_second(model: VisionModel, batch: torch.Tensor, seconds: float) -> float:
    for _ in range(3):  # warm-up: the first calls plan kernels
        model.embed_tensors(batch)
    torch.cuda.synchronize()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.embed_tensors(batch)  # returns host arrays: the copy back synchronises
        done += len(batch)
    return done / (time.perf_counter() - started)


def agreement(fp32: VisionModel, fp16: VisionModel, tensors: torch.Tensor) -> dict:
    """How far fp16's features and labels are from fp32's on the same photos."""
    one, other = fp32.embed_tensors(tensors), fp16.embed_tensors(tensors)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = (unit(one.features) * unit(other.features)).sum(axis=1)
    top1 = (one.probabilities.argmax(1) == other.probabilities.argmax(1)).mean()
    top5 = np.mean([len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5
                    for a, b in zip(one.probabilities, other.probabilities, strict=True)])
    relative = np.abs(one.features - other.features).max() / np.abs(one.features).max()
    return {"photos": len(tensors), "feature_cosine_min": float(cosine.min()),
            "feature_cosine_mean": float(cosine.mean()),
            "max_relative_feature_error": float(relative),
            "top1_label_agreement": float(top1), "top5_label_overlap": float(top5)}


def decode_rate(photos: list[bytes], threads: int, seconds: float = 3.0) -> float:
    """Photos/s that Pillow decoding and preprocessing give on ``threads`` threads."""
    def one(data: bytes) -> torch.Tensor:
        return preprocess(decode_image(data))

    done, started = 0, time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() - started < seconds:
            done += len(list(pool.map(one, photos[:64])))
    return done / (time.perf_counter() - started)


async def service_rows(model: VisionModel, photos: list[bytes], seconds: float,
                       ) -> dict[str, dict]:
    from hashrec.v1 import vision_pb2, vision_pb2_grpc

    rows = {}
    fresh = iter(range(10**9))
    for max_batch in (8, 32, 64):
        server = await serve("127.0.0.1", 0, model, max_batch=max_batch, max_queued=4096)
        async with grpc.aio.insecure_channel(server.address,
                                             options=CHANNEL_OPTIONS) as channel:
            stub = vision_pb2_grpc.VisionServiceStub(channel)

            async def embed(i: int, stub=stub) -> bool:
                await refused_as_shed(stub.Embed(vision_pb2.EmbedRequest(
                    image=new_photo(photos[i % len(photos)], next(fresh))), timeout=30))
                return False

            await load(embed, 1.0, 16, 10**6)  # warm-up
            for concurrency in (64, 256):
                batcher = server.batcher
                batches, items = batcher.batches, batcher.items
                row = await load(embed, seconds, concurrency, 10**6)
                row["mean_batch"] = (batcher.items - items) / max(1, batcher.batches - batches)
                rows[f"cold Embed, max batch {max_batch} @{concurrency}"] = row
        await server.stop()
    return rows


def main(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench/vision_cuda.py needs a CUDA device")
    folder = args.photos or data_root() / "food" / "images"
    photos = [p.read_bytes() for p in sorted(Path(folder).glob("*.jpg"))][:512]
    tensors = torch.stack([preprocess(decode_image(p)) for p in photos[:64]])
    from services.vision.model import gpu_decoding_available

    result: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                    "nvjpeg_decoding": gpu_decoding_available(),
                    "cpu_cores": len(os.sched_getaffinity(0)), "photos": len(photos)}
    models = {"fp32": VisionModel(device="cuda"), "fp16": VisionModel(device="cuda",
                                                                      half=True)}
    result["model"] = {name: {str(b): images_per_second(model, tensors[:b], args.seconds)
                              for b in BATCHES} for name, model in models.items()}
    result["agreement"] = agreement(models["fp32"], models["fp16"], torch.stack(
        [preprocess(decode_image(p)) for p in photos[:256]]))
    result["decode"] = {str(t): decode_rate(photos, t) for t in (1, 4, result["cpu_cores"])}
    setup_logging("WARNING")
    result["service"] = asyncio.run(service_rows(models["fp16"], photos, args.seconds))
    print(f"{result['device']}, torch {result['torch']}, {result['cpu_cores']} CPU cores; "
          f"the service decodes JPEGs with {'nvJPEG' if result['nvjpeg_decoding'] else 'Pillow'}")
    print(f"{'batch':>6}" + "".join(f"{name + ' img/s':>14}" for name in models))
    for b in BATCHES:
        print(f"{b:>6}" + "".join(f"{result['model'][n][str(b)]:>14.0f}" for n in models))
    print("fp16 vs fp32:", json.dumps(result["agreement"]))
    print("decode + preprocess on the CPU, photos/s by threads:",
          {t: round(v) for t, v in result["decode"].items()})
    for name, row in result["service"].items():
        print(f"{name:<36} {row['qps']:>8.0f}/s  p50 {row['p50']:>6.0f} ms  p99 "
              f"{row['p99']:>6.0f} ms  mean batch {row['mean_batch']:.1f}  shed "
              f"{row['shed_pct']:.0f} %  errors {row['errors']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path)
    main(parser.parse_args())
