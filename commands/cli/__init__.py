"""The ``hashrec`` command."""

# One module a command group: evaluate (and user), train, client (recommend, feedback,
# retrieve), serve (serve, rollout, verify; processes: its children), shards
# (reshard-users); common holds what they share.

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from commands.cli.client import _add_feedback_and_retrieve, _add_recommend
from commands.cli.evaluate import _add_evaluate
from commands.cli.serve import _add_rollout, _add_serve, _add_verify
from commands.cli.shards import add_reshard
from commands.cli.train import _add_train
from shared.config import DATA_ROOT_ENV, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashrec", description=__doc__)
    parser.add_argument("--data-root", type=Path,
                        help=f"where FORMAT:PATH specs are looked up (env {DATA_ROOT_ENV}; "
                             "default ../shared/data beside the repository)")
    parser.add_argument("--log-level", default=None)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_evaluate(commands)
    _add_train(commands)
    _add_recommend(commands)
    _add_feedback_and_retrieve(commands)
    _add_serve(commands)
    _add_rollout(commands)
    _add_verify(commands)
    add_reshard(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.data_root:
        os.environ[DATA_ROOT_ENV] = str(args.data_root)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hashrec: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `hashrec recommend ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

