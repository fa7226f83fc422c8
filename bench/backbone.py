"""EfficientNet-Lite0 against Lite2 as the photo backbone: quality against cost, one table.

    python bench/backbone.py [--sets instagram,food,dcmr:mirflickr25k] [--seed 0]

Cost: both backbones embed the same 32 preprocessed photos on this machine's CPU, batch 32
and batch 1 (best of --repeats), reported as ms a photo and as a ratio to Lite0 in this
run. Quality: `evaluate image2tag` as the CLI runs it (seeded 80/20 split of each photo
set, vocabulary from the training photos; instagram's six search hashtags left out) with
the frequency, kNN and MLP methods and their fusion on each backbone's features; P@1 and
R@5. Features are cached per backbone under $HASHREC_MODELS/features (the first Lite2 run
embeds every photo: minutes, with progress). Writes out/backbone.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from commands.experiments.image2tag import run_image2tag
from services.vision.model import BACKBONES, VisionModel, decode_image, preprocess
from services.vision.store import FeatureStore
from shared.config import data_root, models_dir, setup_logging
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from shared.data.split import seeded_split

#: The collection's search hashtags, as `evaluate image2tag --ignore-tags` drops them.
INSTAGRAM_SEARCH_TAGS = frozenset({"animals", "cars", "fitness", "food", "selfie", "travel"})


def cost(model: VisionModel, photos: list[bytes], repeats: int) -> dict[str, float]:
    """ms a photo, best of `repeats`, for one batch of every photo and for single photos."""
    batch = torch.stack([preprocess(decode_image(data), model.image_size) for data in photos])
    model.embed_tensors(batch[:2])  # warm-up

    def best(run) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return min(times)

    batched = best(lambda: model.embed_tensors(batch)) / len(photos)
    single = best(lambda: [model.embed_tensors(batch[i:i + 1]) for i in range(8)]) / 8
    return {"ms_per_photo_batch32": 1000 * batched, "ms_per_photo_batch1": 1000 * single}


def quality(spec: str, store: FeatureStore, seed: int) -> dict[str, dict[str, float]]:
    posts = normalize_post_hashtags(read_posts(spec))
    train, test = seeded_split(posts, seed)
    ignore = INSTAGRAM_SEARCH_TAGS if spec.startswith("instagram") else frozenset()
    result = run_image2tag(train, test, store, ignore, methods=["frequency", "knn", "mlp"],
                           seed=seed)
    return {name: {m: round(row[m], 2) for m in ("P@1", "R@5")}
            for name, row in result.results.items() if name != "learned_fusion"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="instagram:instagram,food:food,dcmr:mirflickr25k")
    parser.add_argument("--backbones", default="lite0,lite2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("out/backbone.json"))
    args = parser.parse_args()
    setup_logging()
    photos = [p.read_bytes() for p in sorted((data_root() / "food" / "images").glob("*.jpg"))
              [:32]]
    rows: dict[str, dict] = {}
    for name in args.backbones.split(","):
        backbone = BACKBONES[name]
        model = VisionModel(device="cpu", backbone=backbone)
        row = {"backbone": backbone.id, "image_size": backbone.image_size,
               **cost(model, photos, args.repeats)}
        store = FeatureStore(models_dir() / "features", model)
        row["sets"] = {spec.split(":")[-1]: quality(spec, store, args.seed)
                       for spec in args.sets.split(",")}
        rows[name] = row
    reference = rows[next(iter(rows))]
    sets = list(reference["sets"])
    header = (f"{'backbone':<10}{'px':>5}{'ms b32':>8}{'ms b1':>8}{'cost×':>7}"
              + "".join(f"{s[:12] + ' ' + m:>22}" for s in sets for m in ("P@1", "R@5")))
    print("\nquality (fusion of frequency, kNN, MLP; best single method in brackets) "
          "against cost (CPU, this run)")
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        row["cost_ratio"] = round(row["ms_per_photo_batch32"]
                                  / reference["ms_per_photo_batch32"], 2)
        cells = ""
        for s in sets:
            results = row["sets"][s]
            single = {k: v for k, v in results.items() if k != "fusion"}
            for metric in ("P@1", "R@5"):
                top = max(single.values(), key=lambda r, m=metric: r[m])[metric]
                cells += f"{results['fusion'][metric]:>14.2f} ({top:>5.2f})"
        print(f"{name:<10}{row['image_size']:>5}{row['ms_per_photo_batch32']:>8.1f}"
              f"{row['ms_per_photo_batch1']:>8.1f}{row['cost_ratio']:>7.2f}" + cells)
    deltas = {s: {m: round(rows[n]["sets"][s]["fusion"][m]
                           - reference["sets"][s]["fusion"][m], 2) for m in ("P@1", "R@5")}
              for n in list(rows)[1:] for s in sets}
    print(f"fusion change against {next(iter(rows))}: {deltas}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
