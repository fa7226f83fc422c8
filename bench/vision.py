"""Throughput of the vision model: eager vs optimised, batch 1 and 32, and decoding cost.

    python bench/vision.py [--seconds 5] [--device cpu|cuda]

On real photos from the food set: images/s of the raw network (eager PyTorch) and of the
served one (TorchScript-frozen, channels_last) at batch 1, 8 and 32, and the cost per image
of decode (Pillow, EXIF) + preprocess (bicubic resize, crop, normalise). Prints figures and
the ratio optimised / eager measured in the same run.

Then elongated photos (a 110-byte 1 x 8000 PNG, the audit's, and others): decode +
preprocess time and the peak resident memory of a child process doing it (imports
included), against the same for one
food photo, and against resizing the whole image before the crop (the preprocess before
the audit, in a child process of its own with a 4 GiB address-space limit).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from services.vision.model import (
    IMAGE_SIZE,
    RESIZE_SHORT_SIDE,
    VisionModel,
    decode_image,
    preprocess,
)
from shared.config import data_root, setup_logging


def whole_then_crop(image: Image.Image) -> Image.Image:
    """The crop as preprocess made it before the audit: the whole image resized (short side
    256), then the centre 224² cut out; the reference for preprocess's cost."""
    width, height = image.size
    scale = RESIZE_SHORT_SIDE / min(width, height)
    resized = image.resize((max(IMAGE_SIZE, round(width * scale)),
                            max(IMAGE_SIZE, round(height * scale))), Image.Resampling.BICUBIC)
    left, top = (resized.width - IMAGE_SIZE) // 2, (resized.height - IMAGE_SIZE) // 2
    return resized.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))


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
    started = time.perf_counter()
    for image in images:
        whole_then_crop(image)
    whole_ms = (time.perf_counter() - started) / len(images) * 1000
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(blobs)} food photos, mean {sum(map(len, blobs)) / len(blobs) / 1024:.0f} kB")
    print(f"decode {decode_ms:.2f} ms/image, preprocess {preprocess_ms:.2f} ms/image "
          f"-> {1000 / (decode_ms + preprocess_ms):.0f} images/s on one core; resizing the "
          f"whole photo first (before the audit): {whole_ms:.2f} ms/image, "
          f"{whole_ms / preprocess_ms:.2f}x preprocess")

    eager = VisionModel(args.device, optimize=False)
    optimised = VisionModel(args.device, optimize=True)
    print(f"{'batch':>5}{'eager img/s':>14}{'optimised img/s':>18}{'ratio':>8}")
    for size in (1, 8, 32):
        batch = torch.stack(tensors[:size])
        slow = images_per_second(eager, batch, args.seconds)
        fast = images_per_second(optimised, batch, args.seconds)
        print(f"{size:>5}{slow:>14.1f}{fast:>18.1f}{fast / slow:>8.2f}")
    elongated(photos[0])


ELONGATED = """
import io, resource, sys, time
from PIL import Image
from bench.vision import whole_then_crop
from services.vision.model import decode_image, preprocess
if sys.argv[1] == "photo":
    data = open(sys.argv[2], "rb").read()
else:
    buffer = io.BytesIO()
    Image.new("RGB", tuple(map(int, sys.argv[1].split("x"))), (10, 200, 30)).save(buffer, "PNG")
    data = buffer.getvalue()

warm = Image.new("RGB", (300, 200))  # first calls load codecs and filters: not timed
preprocess(warm), whole_then_crop(warm)
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))
started = time.perf_counter()
try:
    image = decode_image(data)
    (whole_then_crop if sys.argv[3] == "before" else preprocess)(image)
    outcome = "ok"
except MemoryError:
    outcome = "MemoryError"
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the whole process
print(len(data), seconds, peak / 1024, outcome)
"""


def elongated(photo: Path) -> None:
    print(f"\n{'image':<12}{'bytes':>8}{'way':>8}{'ms':>10}{'peak RSS MiB':>14}  outcome")
    for image in ("photo", "1x8000", "8000x1", "2x19000", "200x20000"):
        for way in ("now", "before"):
            run = subprocess.run([sys.executable, "-c", ELONGATED, image, str(photo), way],
                                 capture_output=True, text=True, timeout=600,
                                 cwd=Path(__file__).parents[1])
            if run.returncode:
                print(f"{image:<12}{'':>8}{way:>8}  failed: {run.stderr.strip()[-200:]}")
                continue
            size, seconds, mib, outcome = run.stdout.split()
            print(f"{image:<12}{int(size):>8,}{way:>8}{1000 * float(seconds):>10.1f}"
                  f"{float(mib):>14.1f}  {outcome}")


if __name__ == "__main__":
    main()
