"""EfficientNet-Lite0 against Lite2 as the photo backbone, each with and without
horizontal-flip test-time averaging: quality against cost, one table, and the choice a
community would make.

    python bench/backbone.py [--sets instagram,food,dcmr:mirflickr25k] [--seed 0]
                             [--variants lite0,lite0+flip,lite2,lite2+flip] [--split valid]

``+flip``: the features are the mean of the photo's and its mirror image's (the class
probabilities from that mean); twice the backbone's work.

``--split valid`` (the default) measures on validation photos: the training part of
`hashrec train --hold-out SEED` (the seeded 80 %), split 80/20 again with SEED + 1, ...,
SEED + --valid-splits (the mean over the splits: one split of a few hundred photos moves
R@5 by a point or two either way), so the photos `evaluate served` reports on take no
part in the choice. Each set then chooses the
variant with the best validation R@5 when it beats lite0 by at least --margin, and the
held-out photos report lite0 and the chosen variant once. ``--split held-out``: the
seeded 80/20 split of the whole set, as earlier runs of this bench measured.

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

import numpy as np
import torch

from commands.experiments.image2tag import run_image2tag
from commands.train import held_out_split
from services.vision.model import BACKBONES, Embedding, VisionModel, decode_image, preprocess
from services.vision.store import FeatureStore
from shared.config import data_root, models_dir, setup_logging
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from shared.data.split import seeded_split

#: The collection's search hashtags, as `evaluate image2tag --ignore-tags` drops them.
INSTAGRAM_SEARCH_TAGS = frozenset({"animals", "cars", "fitness", "food", "selfie", "travel"})


class FlipAveraged(VisionModel):
    """Features averaged over the photo and its horizontal mirror (test-time
    augmentation); p(x) from the averaged features."""

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> Embedding:
        plain, mirrored = super().embed_tensors(batch), super().embed_tensors(batch.flip(-1))
        features = (plain.features + mirrored.features) / 2
        probabilities = self.classes(torch.from_numpy(features).to(self.device)).cpu().numpy()
        return Embedding(features, probabilities)


def variant_store(variant: str) -> FeatureStore:
    """The variant's model and its feature store: a flipped variant's features are kept
    apart from the plain backbone's (features-flip/)."""
    name, _, flip = variant.partition("+")
    if flip not in ("", "flip"):
        raise SystemExit(f"unknown variant {variant!r}: a backbone, optionally +flip")
    model = (FlipAveraged if flip else VisionModel)(device="cpu", backbone=BACKBONES[name])
    return FeatureStore(models_dir() / ("features-flip" if flip else "features"), model)


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


def splits(spec: str, seed: int, split: str, valid_splits: int = 3,
           ) -> dict[str, list[tuple[list, list]]]:
    """The (train, test) pairs to measure on: "valid" (the training part split again,
    ``valid_splits`` times) and, with split "valid", "held-out" (the training part and
    the held-out photos) for the report."""
    posts = normalize_post_hashtags(read_posts(spec))
    if split == "held-out":
        return {"held-out": [seeded_split(posts, seed)]}
    train, held_out = held_out_split(posts, seed)
    return {"valid": [seeded_split(train, seed + 1 + i) for i in range(valid_splits)],
            "held-out": [(train, held_out)]}


def quality(pairs: list[tuple[list, list]], spec: str, store: FeatureStore,
            seed: int) -> dict[str, dict[str, float]]:
    """P@1 and R@5 of each method and the fusion, the mean over the (train, test) pairs."""
    ignore = INSTAGRAM_SEARCH_TAGS if spec.startswith("instagram") else frozenset()
    runs = [run_image2tag(train, test, store, ignore, methods=["frequency", "knn", "mlp"],
                          seed=seed).results for train, test in pairs]
    return {name: {m: round(float(np.mean([run[name][m] for run in runs])), 2)
                   for m in ("P@1", "R@5")}
            for name in runs[0] if name != "learned_fusion"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="instagram:instagram,food:food,dcmr:mirflickr25k")
    parser.add_argument("--variants", "--backbones", default="lite0,lite0+flip,lite2,lite2+flip")
    parser.add_argument("--split", choices=("valid", "held-out"), default="valid")
    parser.add_argument("--valid-splits", type=int, default=3)
    parser.add_argument("--margin", type=float, default=0.5,
                        help="R@5 points a variant must gain over lite0 on validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("out/backbone.json"))
    args = parser.parse_args()
    setup_logging()
    photos = [p.read_bytes() for p in sorted((data_root() / "food" / "images").glob("*.jpg"))
              [:32]]
    measured = "valid" if args.split == "valid" else "held-out"
    parts = {spec: splits(spec, args.seed, args.split, args.valid_splits)
             for spec in args.sets.split(",")}
    rows: dict[str, dict] = {}
    stores: dict[str, FeatureStore] = {}
    for variant in args.variants.split(","):
        store = stores[variant] = variant_store(variant)
        model = store.model
        row = {"backbone": model.backbone.id, "image_size": model.image_size,
               **cost(model, photos, args.repeats)}
        row["store"] = str(store.directory)
        row["sets"] = {spec.split(":")[-1]: quality(parts[spec][measured], spec, store,
                                                    args.seed)
                       for spec in parts}
        rows[variant] = row
    reference = rows[next(iter(rows))]
    sets = list(reference["sets"])
    header = (f"{'variant':<12}{'px':>5}{'ms b32':>8}{'ms b1':>8}{'cost×':>7}"
              + "".join(f"{s[:12] + ' ' + m:>22}" for s in sets for m in ("P@1", "R@5")))
    print(f"\n{measured} photos: quality (fusion of frequency, kNN, MLP; best single method "
          "in brackets) against cost (CPU, this run)")
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
        print(f"{name:<12}{row['image_size']:>5}{row['ms_per_photo_batch32']:>8.1f}"
              f"{row['ms_per_photo_batch1']:>8.1f}{row['cost_ratio']:>7.2f}" + cells)
    report = {"seed": args.seed, "split": args.split, "valid_splits": args.valid_splits,
              "rows": rows}
    if args.split == "valid":
        report["chosen"] = choose_and_report(rows, stores, parts, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


def choose_and_report(rows: dict[str, dict], stores: dict[str, FeatureStore], parts: dict,
                      args: argparse.Namespace) -> dict:
    """Each set's choice on validation R@5, then lite0 and the choice on held-out photos."""
    base = next(iter(rows))
    chosen = {}
    print(f"\nchoice per set (validation R@5, a gain of at least {args.margin} over {base})")
    for spec in parts:
        name = spec.split(":")[-1]
        gains = {v: rows[v]["sets"][name]["fusion"]["R@5"]
                 - rows[base]["sets"][name]["fusion"]["R@5"] for v in rows}
        best = max(gains, key=gains.get)
        pick = best if gains[best] >= args.margin else base
        report = {}
        for variant in dict.fromkeys((base, pick)):
            report[variant] = quality(parts[spec]["held-out"], spec, stores[variant],
                                      args.seed)["fusion"]
        chosen[name] = {"variant": pick, "validation_gain": round(gains[pick], 2),
                        "held_out": report}
        print(f"{name:<14} {pick:<12} validation +{gains[pick]:.2f}; held-out R@5 "
              + ", ".join(f"{v} {r['R@5']:.2f}" for v, r in report.items()))
    return chosen


if __name__ == "__main__":
    main()
