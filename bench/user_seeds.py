"""The user-conditional methods over several simulated populations: mean ± spread.

    python bench/user_seeds.py [--users 300] [--seeds 0,1,2] [--meaning-probability 0]
        [--json OUT]

One seed of the simulated-user benchmark is ~400 test posts, so one post moves A@1 by
~0.25 points and a single seed can flip which method wins. This runs
`hashrec evaluate user`'s experiment (commands/experiments/user.py: run_user) once per seed, each
seed a different population of users, and prints each method's A@1 / A@10 per seed, their
mean and standard deviation, and on how many seeds each user-conditional method beats each
baseline on both metrics. A few minutes per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from commands.experiments.user import run_user
from services.user.model import TensorParams
from services.user.task import split_with_features
from services.vision.store import FeatureStore
from shared.config import data_root, models_dir, setup_logging
from shared.data.simulated_users import SIGNATURE_PROBABILITY, simulate, source_posts

BASELINES = ("user_frequency", "agnostic")
#: the user-conditional methods counted against each baseline
CHALLENGERS = ("tensor", "mlp", "habit_x_photo", "lift_x_photo")


def results_for_seed(seed: int, users: int, signature_probability: float,
                     sources: list, store: FeatureStore, meaning_probability: float = 0.0,
                     ) -> dict[str, dict[str, float]]:
    posts = simulate(sources, n_users=users, seed=seed,
                     signature_probability=signature_probability,
                     meaning_probability=meaning_probability)
    train, test, features = split_with_features(posts, store)
    # The CLI's defaults: D, F, E = 300, 300, 50, at most 30 epochs.
    params = TensorParams(epochs=30, seed=seed)
    return run_user(train, test, features, params, seed=seed, progress=False).results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--signature-probability", type=float, default=SIGNATURE_PROBABILITY)
    parser.add_argument("--meaning-probability", type=float, default=0.0,
                        help="rule 7 of shared/data/simulated_users.py (0: off)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    setup_logging(os.environ.get("HASHREC_LOG_LEVEL", "WARNING"))
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    sources = source_posts(data_root())
    store = FeatureStore(models_dir() / "features")
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = results_for_seed(seed, args.users, args.signature_probability,
                                          sources, store, args.meaning_probability)
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    methods = list(per_seed[seeds[0]])
    summary = {}
    print(f"\n{'method':<18}" + "".join(f"{'A@1 s' + str(s):>10}" for s in seeds)
          + f"{'mean':>8}{'sd':>6}" + "".join(f"{'A@10 s' + str(s):>10}" for s in seeds)
          + f"{'mean':>8}{'sd':>6}")
    for method in methods:
        line = f"{method:<18}"
        summary[method] = {}
        for metric in ("A@1", "A@10"):
            values = np.array([per_seed[s][method][metric] for s in seeds])
            summary[method][metric] = {"mean": round(float(values.mean()), 2),
                                       "sd": round(float(values.std(ddof=1)), 2)
                                       if len(values) > 1 else 0.0}
            line += "".join(f"{v:>10.2f}" for v in values)
            line += f"{values.mean():>8.2f}{summary[method][metric]['sd']:>6.2f}"
        print(line)
    wins = {challenger: {baseline: sum(all(per_seed[s][challenger][m] > per_seed[s][baseline][m]
                                           for m in ("A@1", "A@10")) for s in seeds)
                         for baseline in BASELINES}
            for challenger in CHALLENGERS if challenger in methods}
    for challenger, counts in wins.items():
        for baseline, count in counts.items():
            print(f"{challenger} beats {baseline} on both A@1 and A@10 on {count} of "
                  f"{len(seeds)} seeds")
    print(f"{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seeds": seeds, "per_seed": per_seed,
                                         "summary": summary, "wins": wins},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
