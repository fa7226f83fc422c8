"""What fitting the fusions (and the gate) on a sample of the photos costs in quality:
$HASHREC_FIT_SAMPLE at every photo and smaller, on validation photos.

    python bench/fit_sample.py [--samples 0,1000,500] [--hold-out 0]

Validation: each photo set's training part of `hashrec train --hold-out SEED` (the seeded
80 %), split 80/20 again with SEED + 1; the default recipe (every photo set a community,
the seven methods, three folds) trains on the 80 % once per sample size, and each set's
20 % is answered as `evaluate served` answers (in process), by the gate and named. The
photos `evaluate served` reports on take no part. The hashtag knowledge is the corpora's
training part, as `--hold-out` makes it (it holds the validation posts' hashtag lists
too, alike for every sample size). Writes out/fit_sample.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from commands.engine import LocalEngine
from commands.experiments.image2tag import Community
from commands.experiments.served import evaluate_served, in_process_answer
from commands.train import (
    DEFAULT_COMMUNITIES,
    DEFAULT_CORPORA,
    DEFAULT_METHODS,
    hashtag_knowledge,
    held_out_split,
    train_communities,
)
from services.vision.store import FeatureStore
from shared.batching import usable_cores
from shared.config import FIT_SAMPLE_ENV, models_dir, setup_logging
from shared.data.normalize import normalize_post_hashtags
from shared.data.readers import read_posts
from shared.data.split import seeded_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default="0,1000,500",
                        help="photos the fusions fit on; 0: every training photo")
    parser.add_argument("--hold-out", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/fit_sample.json"))
    args = parser.parse_args()
    setup_logging()
    store = FeatureStore(models_dir() / "features")
    parts = {}
    for name, spec, ignore in DEFAULT_COMMUNITIES:
        train, _ = held_out_split(normalize_post_hashtags(read_posts(spec)), args.hold_out)
        parts[name] = (spec, ignore, *seeded_split(train, args.hold_out + 1))
    text = hashtag_knowledge(DEFAULT_CORPORA, args.hold_out)
    members = [Community(name, fit, ignore) for name, (_, ignore, fit, _) in parts.items()]
    table = {}
    for sample in (int(s) for s in args.samples.split(",")):
        os.environ[FIT_SAMPLE_ENV] = str(sample or 10**9)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            models = train_communities(members, store, Path(folder), DEFAULT_METHODS,
                                       seed=0, folds=3, progress=False, text=text,
                                       engine=LocalEngine(usable_cores()))
            row = {"train_s": round(time.perf_counter() - started, 1),
                   "fusion_photos": json.loads((models.directory / "manifest.json")
                                               .read_text())["fit_sample"]["photos"]}
            for name, (_, ignore, fit, valid) in parts.items():
                for how, community in (("gate", ""), ("named", name)):
                    result = evaluate_served(fit, valid, in_process_answer(
                        models, store, community=community), ignore)
                    row[f"{name} {how}"] = result.results["set vocabulary"]["R@5"]
        table[sample or "all"] = row
        print(f"sample {sample or 'all'}: {json.dumps(row)}", flush=True)
    columns = [c for c in next(iter(table.values())) if c not in ("train_s",)]
    print("| fusions fit on | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 1))
    for sample, row in table.items():
        print(f"| {sample} | " + " | ".join(str(row[c]) for c in columns) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
