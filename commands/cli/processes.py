"""`hashrec serve`'s processes: each service a supervised child (commands/supervisor.py),
the user service as one child a shard, and the ports each takes."""

from __future__ import annotations

import argparse
import collections
import os
from pathlib import Path

#: each service's offset from the metrics base port (9100: 9100 to 9104, as deploy/ uses)
METRICS_OFFSETS = {"recommender": 0, "vision": 1, "word": 2, "graph": 3, "user": 4}
DEFAULT_PORT, DEFAULT_METRICS_PORT = 50050, 9100


def metrics_ports(port: int, base: int | None) -> dict[str, int]:
    """The services' Prometheus ports: from ``base`` (--metrics-port), or moved with
    --port (9100 at the default 50050), so two instances on one host do not collide. A
    service whose HASHREC_<NAME>_METRICS_PORT is set keeps that."""
    if base is None:
        base = DEFAULT_METRICS_PORT + port - DEFAULT_PORT
    if not 1024 <= base <= 65535 - len(METRICS_OFFSETS):
        base = DEFAULT_METRICS_PORT  # --port far from the default: the documented ports
    return {name: base + offset for name, offset in METRICS_OFFSETS.items()
            if not os.environ.get(f"HASHREC_{name.upper()}_METRICS_PORT")}


def single_process_metrics(port: int, base: int | None) -> dict[str, int]:
    """Each service's metrics port with --single-process: as the processes get them, or
    HASHREC_<NAME>_METRICS_PORT where that is set (0: any free port)."""
    from shared.config import env_port

    metrics = metrics_ports(port, base)
    return {name: metrics[name] if name in metrics
            else env_port(f"HASHREC_{name.upper()}_METRICS_PORT", 0)
            for name in METRICS_OFFSETS}


def _metrics_env(name: str, metrics: dict[str, int]) -> dict[str, str]:
    return {f"HASHREC_{name.upper()}_METRICS_PORT": str(metrics[name])} \
        if name in metrics else {}


def child_threads() -> dict[str, dict[str, str]]:
    """Each child's HASHREC_THREADS when the operator set none: the vision model's passes
    take every core; the scoring services, whose batches are small matrix products, take
    one each, so five processes' thread pools do not spin against each other on the same
    cores (bench/serving.py, 64 cold calls in flight on 2 cores: 27 → 40 answers/s)."""
    from shared.batching import THREADS_ENV

    if os.environ.get(THREADS_ENV):
        return collections.defaultdict(dict)
    return collections.defaultdict(lambda: {THREADS_ENV: "1"}, vision={})


def serve_processes(args: argparse.Namespace, model_dir: Path, user_dir: Path) -> int:
    """Every service its own supervised child process (commands/supervisor.py)."""
    import asyncio

    from commands.cli.serve import verified_newest
    from commands.cli.shards import (
        default_state_root,
        user_shard_env,
        user_shard_name,
        user_shard_ports,
    )
    from commands.supervisor import ChildSpec, Supervisor, grpc_ready, http_ready
    from services.image_models import KIND as IMAGE_KIND
    from services.user.lookup import KIND as USER_KIND

    host, port, shards = args.host, args.port, args.user_shards
    probe = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    backends = {"vision": port + 1, "word": port + 2, "graph": port + 3}
    users = {user_shard_name(i, shards): p
             for i, p in enumerate(user_shard_ports(port, shards))}
    # A rollout (SIGHUP: `hashrec rollout`) is of the newest version in the folder, once
    # it verifies; a restarted service then starts on it, the one the others switched to,
    # and never on a version that was refused.
    def rolled_out() -> dict[str, str]:
        return {"HASHREC_MODEL_DIR": str(verified_newest(model_dir.parent, IMAGE_KIND)),
                "HASHREC_USER_MODEL_DIR": str(verified_newest(user_dir.parent, USER_KIND))}
    threads = child_threads()
    metrics = metrics_ports(port, args.metrics_port)
    specs = [ChildSpec(name, f"services.{name}.server",
                       {**threads[name], f"HASHREC_{name.upper()}_HOST": host,
                        f"HASHREC_{name.upper()}_PORT": str(backend_port),
                        **_metrics_env(name, metrics),
                        "HASHREC_MODEL_DIR": str(model_dir),
                        "HASHREC_USER_MODEL_DIR": str(user_dir),
                        "OTEL_SERVICE_NAME": f"hashrec-{name}"},
                       grpc_ready(f"{probe}:{backend_port}"),
                       reloads=name in ("word", "graph"), rollout_env=rolled_out)
             for name, backend_port in backends.items()]
    state_root = Path(os.environ.get("HASHREC_USER_STATE") or default_state_root(user_dir))
    specs += [ChildSpec(name, "services.user.server",
                        {**threads["user"], "HASHREC_USER_MODEL_DIR": str(user_dir),
                         "OTEL_SERVICE_NAME": f"hashrec-{name}",
                         **user_shard_env(index, shards, host, user_port,
                                          metrics["user"] + index if "user" in metrics
                                          else None, state_root)},
                        grpc_ready(f"{probe}:{user_port}"), reloads=True,
                        rollout_env=rolled_out)
              for index, (name, user_port) in enumerate(users.items())]
    specs.append(ChildSpec(
        "recommender", "services.recommender.server",
        {**threads["recommender"], "HASHREC_RECOMMENDER_HOST": host,
         "HASHREC_RECOMMENDER_PORT": str(port), **_metrics_env("recommender", metrics),
         "HASHREC_MODEL_DIR": str(model_dir), "OTEL_SERVICE_NAME": "hashrec-recommender",
         **{f"HASHREC_{name.upper()}_TARGET": f"{probe}:{backend_port}"
            for name, backend_port in backends.items()},
         "HASHREC_USER_TARGET": ",".join(f"{probe}:{p}" for p in users.values())},
        grpc_ready(f"{probe}:{port}"), after=(*backends, *users), reloads=True,
        rollout_env=rolled_out))
    if args.http_port:
        specs.append(ChildSpec(
            "gateway", "services.gateway.server",
            {"HASHREC_GATEWAY_HOST": host, "HASHREC_GATEWAY_PORT": str(args.http_port),
             "OTEL_SERVICE_NAME": "hashrec-gateway",
             "HASHREC_RECOMMENDER_TARGET": f"{probe}:{port}"},
            http_ready(f"http://{probe}:{args.http_port}/readyz"), after=("recommender",)))

    def announce() -> None:
        addresses = [f"{host}:{p}" for p in [*backends.values(), *users.values()]]
        print(f"serving hashrec.v1.RecommenderService on {host}:{port} (vision, word, graph, "
              f"user{f' ({shards} shards)' if shards > 1 else ''} on {', '.join(addresses)}, "
              f"one process each; model {model_dir.name}, user model {user_dir.name})",
              flush=True)
        if args.http_port:
            print(f"the page: http://{host}:{args.http_port}/", flush=True)

    return asyncio.run(Supervisor(specs).run(on_ready=announce))
