"""Throughput of the vision model: eager vs optimised, batch 1 and 32, and decoding cost.

    python bench/vision.py [--seconds 5] [--device cpu|cuda]

On real photos from the food set: images/s of the raw network (eager PyTorch) and of the
served one (TorchScript-frozen, channels_last) at batch 1, 8 and 32, and the cost per image
of decode (Pillow, EXIF) + preprocess (bicubic resize, crop, normalise). Prints figures and
the ratio optimised / eager measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from services.vision.model import VisionModel, decode_image, preprocess
from shared.config import data_root, setup_logging


def images_per_second(model: VisionModel, batch: torch.Tensor, seconds: float) -> float:
    model.embed_tensors(batch)  # warm-up: first calls plan kernels
    model.embed_tensors(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.embed_tensors(batch)
        done += len(batch)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    setup_logging("WARNING")
    photos = sorted((data_root() / "food" / "images").glob("*.jpg"))[:64]
    blobs = [Path(p).read_bytes() for p in photos]

    started = time.perf_counter()
    images = [decode_image(blob) for blob in blobs]
    decode_ms = (time.perf_counter() - started) / len(blobs) * 1000
    started = time.perf_counter()
    tensors = [preprocess(image) for image in images]
    preprocess_ms = (time.perf_counter() - started) / len(images) * 1000
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(blobs)} food photos, mean {sum(map(len, blobs)) / len(blobs) / 1024:.0f} kB")
    print(f"decode {decode_ms:.2f} ms/image, preprocess {preprocess_ms:.2f} ms/image "
          f"-> {1000 / (decode_ms + preprocess_ms):.0f} images/s on one core")

    eager = VisionModel(args.device, optimize=False)
    optimised = VisionModel(args.device, optimize=True)
    print(f"{'batch':>5}{'eager img/s':>14}{'optimised img/s':>18}{'ratio':>8}")
    for size in (1, 8, 32):
        batch = torch.stack(tensors[:size])
        slow = images_per_second(eager, batch, args.seconds)
        fast = images_per_second(optimised, batch, args.seconds)
        print(f"{size:>5}{slow:>14.1f}{fast:>18.1f}{fast / slow:>8.2f}")


if __name__ == "__main__":
    main()
