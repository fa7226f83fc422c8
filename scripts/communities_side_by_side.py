"""The README's side-by-side: a few held-out photos of each photo set answered by a model
trained with `hashrec train --hold-out 0` (it never saw them), once as the gate reads the
photo ("auto") and once posted to its own community, beside the poster's own hashtags.

    .venv/bin/python scripts/communities_side_by_side.py MODEL_DIR [--per-set 2]

Prints a markdown table. The photos are the first of each set's held-out 20 % that carry a
hashtag of the set's vocabulary (the split `evaluate served` measures on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETS = (("instagram", "instagram:instagram"), ("food", "food:food"),
        ("flickr", "dcmr:mirflickr25k"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--per-set", type=int, default=2)
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args()

    from commands.experiments.served import in_process_answer
    from commands.train import held_out_split
    from services.image_models import load_image_models
    from services.vision.store import FeatureStore
    from shared.config import models_dir
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts

    manifest = json.loads((args.model / "manifest.json").read_text())
    if manifest.get("hold_out") is None:
        raise SystemExit(f"{args.model} trained on every photo: train with --hold-out 0")
    seed = manifest["hold_out"]["seed"]
    models = load_image_models(args.model)
    store = FeatureStore(models_dir() / "features")
    print("| photo | poster's hashtags | auto (the gate) | posted to its community |")
    print("| --- | --- | --- | --- |")
    for community, spec in SETS:
        _, held = held_out_split(normalize_post_hashtags(read_posts(spec)), seed)
        vocabulary = set(models.vocabulary)
        photos = [p for p in held if p.image is not None
                  and vocabulary & set(p.hashtags)][:args.per_set]
        auto = in_process_answer(models, store, args.k)(photos)
        named = in_process_answer(models, store, args.k, community=community)(photos)
        for post, gate, own in zip(photos, auto, named, strict=True):
            truth = set(post.hashtags)

            def shown(tags: list[str], truth: set[str] = truth) -> str:
                return " ".join(f"**#{t}**" if t in truth else f"#{t}" for t in tags)

            print(f"| {community} `{post.image.name}` | "
                  f"{' '.join('#' + t for t in post.hashtags[:8])} | {shown(gate)} | "
                  f"{shown(own)} |")


if __name__ == "__main__":
    main()
