"""`hashrec train`: the photo -> hashtag models, written as a versioned artifact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from commands.cli.common import _ignored_tags


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train the photo -> hashtag models and write a versioned artifact",
        description="Fits every photo -> hashtag method and the fusions and writes "
                    "OUT/<version>/ (plain arrays, JSON, a checksummed manifest). Without "
                    "--train: the served default, every shipped photo set as a community "
                    "and the tag-only corpora as hashtag knowledge.")
    parser.add_argument("--train", metavar="SPEC",
                        help="one data set (FORMAT:PATH); default: the shipped photo sets")
    parser.add_argument("--out", type=Path, help="default: $HASHREC_MODELS (./models)")
    parser.add_argument("--ignore-tags", default="", metavar="A,B,...")
    parser.add_argument("--min-count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=None, metavar="A,B,...",
                        help="photo -> hashtag methods (default: frequency,knn,mlp,word,graph "
                             "with --train; the default model adds semantic, autorec_masked)")
    parser.add_argument("--hashtag-corpus", default=None, metavar="SPEC,...",
                        help="tag-only hashtag lists for hashtag knowledge (default model: "
                             "harrison:harrison,dcmr:mirflickr25k)")
    parser.add_argument("--hold-out", type=int, default=None, metavar="SEED",
                        help="keep the seeded 20 %% of each data set out of training, as "
                             "`evaluate image2tag` does, for `evaluate served`")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where feature extraction and the independent fits run: this "
                             "process, or Ray (the same artifact either way)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --engine ray: an existing cluster (e.g. KubeRay's head, "
                             "ray://HOST:10001); default: a local Ray started here")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="local: processes the independent fits run in (default: the "
                             "usable cores; 1: this process alone); ray: vision actors, "
                             "and the local Ray's CPUs (default: every CPU, or every GPU)")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from commands.engine import make_engine
    from commands.train import DEFAULT_CORPORA, DEFAULT_METHODS, train_default, train_from_spec
    from services.vision.store import FeatureStore
    from shared.config import models_dir

    out = args.out or models_dir()
    workers = args.workers
    if workers is None and args.engine == "local":
        from shared.batching import usable_cores

        workers = usable_cores()
    engine = make_engine(args.engine, args.address, workers)
    try:
        if args.train:
            if args.hold_out is not None or args.hashtag_corpus:
                raise SystemExit("--hold-out and --hashtag-corpus go with the default model "
                                 "(no --train)")
            models = train_from_spec(args.train, out, _ignored_tags(args.ignore_tags),
                                     args.min_count, args.seed,
                                     args.methods.split(",") if args.methods else None,
                                     engine)
        else:
            corpora = args.hashtag_corpus.split(",") if args.hashtag_corpus else DEFAULT_CORPORA
            methods = args.methods.split(",") if args.methods else DEFAULT_METHODS
            models = train_default(out, FeatureStore(models_dir() / "features"), args.hold_out,
                                   corpora=corpora, methods=methods, seed=args.seed,
                                   engine=engine)
    except KeyboardInterrupt:  # Ctrl-C, or SIGINT to the process group
        print("hashrec train: interrupted; nothing was published (the half-written version "
              "and the photos' scratch are removed)", file=sys.stderr)
        return 130
    fusion = (f"learned ({models.ranker.weights})" if models.ranker is not None
              else f"{models.fusion.mode} {models.fusion.weights}")
    print(f"model {models.version}: {len(models.vocabulary)} hashtags, methods "
          f"{', '.join(models.methods)}, fusion {fusion}")
    print(f"written to {models.directory}")
    return 0
