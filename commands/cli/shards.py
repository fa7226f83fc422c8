"""The user service as N shards under `hashrec serve --user-shards N`, and
`hashrec reshard-users`: moving the users (with every acknowledged update) to another N."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def user_shard_ports(port: int, shards: int) -> list[int]:
    """Shard i's gRPC port: PORT+4 for the first (the unsharded service's), then on."""
    return [port + 4 + index for index in range(shards)]


def user_shard_env(index: int, shards: int, host: str, port: int, metrics_port: int | None,
                   state_root: Path) -> dict[str, str]:
    """Shard ``index``'s environment (services/user/server.py's config)."""
    from services.user.shards import shard_folder
    from shared.sharding import Shard

    env = {"HASHREC_USER_HOST": host, "HASHREC_USER_PORT": str(port),
           "HASHREC_USER_SHARD_INDEX": str(index), "HASHREC_USER_SHARDS": str(shards),
           "HASHREC_USER_STATE": str(shard_folder(state_root, Shard(index, shards)))}
    if metrics_port is not None:
        env["HASHREC_USER_METRICS_PORT"] = str(metrics_port)
    return env


def user_shard_name(index: int, shards: int) -> str:
    return "user" if shards == 1 else f"user-{index}"


def default_state_root(user_dir: Path) -> Path:
    """Where the user service keeps its state by default: beside its models."""
    return user_dir.parent / "state"


def add_reshard(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reshard-users", help="move the users to another number of user-service shards",
        description="Routes every acknowledged update in the user service's journals to "
                    "the shard that owns its user among --to shards (jump consistent "
                    "hashing of the user id) and lays out the state for `hashrec serve "
                    "--user-shards N`. Run it with the user services stopped (their state "
                    "is locked while they run). The old state is kept in "
                    "STATE/.before-reshard-<time>/; a run that was interrupted is finished "
                    "by running it again (services/user/shards.py).")
    parser.add_argument("--to", type=int, required=True, metavar="N")
    parser.add_argument("--state", type=Path, default=None,
                        help="the user service's state root (default: "
                             "$HASHREC_USER_STATE, else $HASHREC_MODELS/user/state: `hashrec "
                             "serve`'s with a user model under $HASHREC_MODELS/user; with "
                             "--user-model M, M/../state)")
    parser.set_defaults(handler=_reshard)


def _reshard(args: argparse.Namespace) -> int:
    from services.user.shards import ReshardError, reshard
    from shared.config import models_dir
    from shared.grpc_server import StartupError

    root = args.state or Path(os.environ.get("HASHREC_USER_STATE")
                              or models_dir() / "user" / "state")
    try:
        plan = reshard(root, args.to)
    except (ReshardError, StartupError, OSError) as error:
        print(f"hashrec reshard-users: {error}", file=sys.stderr)
        return 2
    print(json.dumps(plan))
    return 0
