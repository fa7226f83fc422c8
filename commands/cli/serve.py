"""`hashrec serve`, `rollout` and `verify`: the services as processes, and their models."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from commands.cli.common import PID_FILE
from commands.cli.processes import DEFAULT_PORT, metrics_ports, single_process_metrics


def _add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="run the five services on this machine, training models first if none "
                      "exist",
        description="RecommenderService on PORT; VisionService, WordEmbeddingService, "
                    "GraphEmbeddingService and UserProfileService on PORT+1..PORT+4; the "
                    "page on --http-port. Each service is its own process (python -m "
                    "services.<name>.server), supervised: restarted with backoff when it "
                    "dies; SIGTERM or Ctrl-C drains them all (commands/supervisor.py). "
                    "Cache: Redis when HASHREC_REDIS_URL is set, else in-process per service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="the first of the five services' Prometheus ports (default: "
                             "9100 at --port 50050, moved with --port)")
    parser.add_argument("--http-port", type=int, default=8080,
                        help="the web page and JSON API (services/gateway); 0: not served")
    parser.add_argument("--models", type=Path,
                        help="a model directory from `hashrec train`; default: the newest "
                             "under $HASHREC_MODELS, trained from --train when there is none")
    parser.add_argument("--user-model", type=Path,
                        help="a user model directory (services/user/train.py); default: the "
                             "newest under $HASHREC_MODELS/user, trained on the simulated-user "
                             "benchmark when there is none")
    parser.add_argument("--train", default=None, metavar="SPEC",
                        help="data to train on when no model exists (default: the default "
                             "model, every shipped photo set: `hashrec train`)")
    parser.add_argument("--single-process", action="store_true",
                        help="every service in this one process (small machines, tests)")
    parser.add_argument("--user-shards", type=int, default=1, metavar="N",
                        help="the user service as N shard processes, shard i on PORT+4+i, "
                             "each owning the users jump hashing gives it, its state in "
                             "STATE/shard-i (`hashrec reshard-users` moves users between "
                             "counts)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from services.image_models import KIND as IMAGE_KIND
    from services.user.lookup import KIND as USER_KIND
    from shared.config import models_dir
    from shared.sharding import MAX_SHARDS

    if not 1 <= args.user_shards <= MAX_SHARDS or (args.single_process
                                                   and args.user_shards > 1):
        print(f"hashrec serve: --user-shards must be 1 to {MAX_SHARDS}, and 1 with "
              "--single-process", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as running:
        try:  # one `hashrec serve` a model folder, from before it trains anything
            running.enter_context(_pid_file())
            # the flags take what the services' environment variables take
            model_dir = named_model(args.models, IMAGE_KIND) if args.models \
                else newest_or_none(models_dir(), IMAGE_KIND)
            user_dir = named_model(args.user_model, USER_KIND) if args.user_model \
                else newest_or_none(models_dir() / "user", USER_KIND)
        except (OSError, ValueError, AlreadyServingError) as error:  # a read-only folder too
            print(f"hashrec serve: {error}", file=sys.stderr)
            return 2
        if not _ports_free(args):  # before minutes of training, not after
            return 2
        # SIGTERM while the models train stops like Ctrl-C: the pid file is emptied
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return _prepare_and_serve(args, model_dir, user_dir, previous)
        except KeyboardInterrupt:
            print("hashrec serve: stopped while preparing the models (the versions "
                  "already written are kept)", file=sys.stderr)
            return 130


def _prepare_and_serve(args: argparse.Namespace, model_dir: Path | None,
                       user_dir: Path | None, on_sigterm: signal.Handlers | Callable | int,
                       ) -> int:
    """Trains what is missing, then serves (this process holds the pid file) with
    ``on_sigterm`` back as SIGTERM's handler."""
    import asyncio

    from commands.train import train_default, train_from_spec
    from services.gateway.server import Settings as GatewaySettings
    from services.gateway.server import serve as serve_gateway
    from services.graph.server import serve as serve_graph
    from services.recommender.server import serve as serve_recommender
    from services.user.server import serve as serve_user
    from services.user.train import newest_user_model, train_user_model
    from services.vision.server import serve as serve_vision
    from services.vision.store import FeatureStore
    from services.word.server import serve as serve_word
    from shared.cache import make_cache
    from shared.config import models_dir

    # `hashrec rollout` finds this process from now on: until it serves, there is nothing
    # to switch, and SIGHUP's default would end the training
    signal.signal(signal.SIGHUP, lambda *_: print(
        "hashrec serve: still preparing the models; nothing to roll out yet", flush=True))
    trained = model_dir is None
    if model_dir is None:
        print(f"no trained model under {models_dir()}: training "
              f"{args.train or 'the default model'} first", flush=True)
        from commands.engine import LocalEngine
        from shared.batching import usable_cores

        engine = LocalEngine(usable_cores())  # the fits side by side, one a core
        model_dir = (train_from_spec(args.train, models_dir(), engine=engine) if args.train
                     else train_default(models_dir(), FeatureStore(models_dir() / "features"),
                                        engine=engine)).directory
    user_dir = user_dir or newest_user_model(models_dir() / "user")
    if user_dir is None:
        trained = True
        print("no user model: training one on the simulated-user benchmark first", flush=True)
        _, user_dir = train_user_model(models_dir() / "user",
                                       FeatureStore(models_dir() / "features"),
                                       image_model=model_dir)

    signal.signal(signal.SIGTERM, on_sigterm)  # serving: the servers drain on SIGTERM
    # checked before training too (_serve); again only if it took long enough for another
    # program to take a port meanwhile
    if trained and not _ports_free(args):
        return 2
    if not args.single_process:
        from commands.cli.processes import serve_processes

        return serve_processes(args, model_dir, user_dir)

    async def run() -> None:
        host, port = args.host, args.port
        cache = make_cache(os.environ.get("HASHREC_REDIS_URL"))
        metrics = single_process_metrics(port, args.metrics_port)
        vision = await serve_vision(host, port + 1, cache=cache,
                                    metrics_port=metrics["vision"])
        word = await serve_word(host, port + 2, model_dir, metrics_port=metrics["word"])
        graph = await serve_graph(host, port + 3, model_dir, metrics_port=metrics["graph"])
        user = await serve_user(host, port + 4, user_dir, metrics_port=metrics["user"])
        recommender = await serve_recommender(host, port, model_dir, vision.address,
                                              word.address, graph.address, user.address,
                                              cache=cache, metrics_port=metrics["recommender"])
        backends = (vision, word, graph, user)
        gateway = None
        if args.http_port:
            settings = GatewaySettings.from_environment()
            settings.recommender = recommender.address
            gateway = await serve_gateway(host, args.http_port, settings)
        print(f"serving hashrec.v1.RecommenderService on {recommender.address} (vision, "
              f"word, graph, user on {', '.join(b.address for b in backends)}; model "
              f"{model_dir.name}, user model {user_dir.name})", flush=True)
        if gateway is not None:
            print(f"the page: http://{host}:{args.http_port}/", flush=True)
        stopped = asyncio.Event()

        async def shutdown() -> None:
            if gateway is not None:  # first: no new requests reach the recommender
                gateway.should_exit = True
                await gateway.task
            await recommender.stop()  # then no new calls reach the backends
            await asyncio.gather(*(backend.stop() for backend in backends))
            stopped.set()

        async def roll_out() -> None:  # the recommender waits for word and graph
            await asyncio.gather(*(server.reload() for server in (word, graph, recommender)
                                   if server.reload is not None))

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(shutdown()))
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(roll_out()))
        await stopped.wait()

    asyncio.run(run())
    return 0


def _ports_free(args: argparse.Namespace) -> bool:
    """Whether every port this serve will take is free; if not, says which, in one line."""
    metrics = metrics_ports(args.port, args.metrics_port)
    extra = range(1, getattr(args, "user_shards", 1))  # shards beyond the first
    ports = [args.port + offset for offset in range(5)] + list(metrics.values()) + \
        [args.port + 4 + i for i in extra] + \
        ([metrics["user"] + i for i in extra] if "user" in metrics else [])
    busy = ports_in_use(args.host, ports + ([args.http_port] if args.http_port else []))
    if busy:
        print(f"hashrec serve: {busy}; stop it first (or choose --port / --http-port / "
              "--metrics-port)", file=sys.stderr)
    return busy is None


def ports_in_use(host: str, ports: list[int]) -> str | None:
    """What holds one of ``ports`` already (another program: a second `hashrec serve` on
    the same model folder is refused by its pid file before this), or None: checked before
    any child starts, so a second start is refused at once instead of restarting children
    against a taken port."""
    import socket

    for port in ports:
        if port == 0:
            continue
        with socket.socket() as probe:
            # as the servers bind: a port whose old connections linger (TIME_WAIT) is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host if host not in ("", "::") else "0.0.0.0", port))
            except OSError:
                return f"port {port} is in use by another program"
    return None


def newest_or_none(folder: Path, kind: str) -> Path | None:
    """The newest verified version of ``kind`` in ``folder``, or None when it holds none
    (then serve trains one); ValueError when it holds versions and none verifies: a
    damaged model is the operator's to mend, not a reason to train minutes over it."""
    from shared.artifacts import resolve_artifact

    try:
        return resolve_artifact(folder, kind)
    except FileNotFoundError:
        return None


def named_model(path: Path, kind: str) -> Path:
    """The version ``path`` names (itself, or the newest of ``kind`` in it), verified
    once: a folder's newest is verified as it is chosen."""
    from shared.artifacts import resolve_artifact

    chosen = resolve_artifact(path, kind)
    return verified(chosen) if chosen == path else chosen


def verified(directory: Path) -> Path:
    """``directory``, its every file checked against its manifest (ValueError naming the
    version and what does not match): a model named directly is refused before any
    service starts, not by each service in turn."""
    from shared.artifacts import ArtifactReader

    try:
        ArtifactReader(directory)
    except (OSError, ValueError) as error:
        raise ValueError(f"model {directory.name}: {error}") from None
    return directory


def verified_newest(folder: Path, kind: str) -> Path:
    """The newest version of ``kind`` in ``folder``, its every file checked against its
    manifest (ValueError naming what does not match)."""
    from shared.artifacts import newest_artifact

    newest = newest_artifact(folder, kind)
    if newest is None:
        raise FileNotFoundError(f"{folder}: no {kind} model to roll out")
    return verified(newest)


class AlreadyServingError(Exception):
    """Another `hashrec serve` holds the model folder's pid file."""


@contextlib.contextmanager
def _pid_file() -> Iterator[None]:
    """$HASHREC_MODELS/serve.pid, locked (flock) and holding this process's pid while it
    runs, training included: `hashrec rollout` finds the pid there, and a second `hashrec
    serve` on the same folder is refused (AlreadyServingError) before it trains or starts
    anything. A file left by a killed serve holds no lock and is taken over; on exit the
    file is emptied, not removed, so that no later serve can lock a name already gone."""
    import fcntl

    from shared.config import MODELS_ENV, models_dir

    path = models_dir() / PID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = path.open("a+")
    except OSError as error:
        raise OSError(f"cannot write its pid file {path} ({error.strerror}): "
                      f"{MODELS_ENV} must be a folder hashrec serve may write") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyServingError(f"already running on {path.parent} (pid "
                             f"{holder}, {path}); stop it first") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        handle.close()  # the lock goes with it


def _is_hashrec_serve(command: list[bytes]) -> bool:
    """Whether a process's argv is `hashrec serve` (the console script, or the module)."""
    words = [Path(w.decode(errors="replace")).name for w in command if w]
    return "serve" in words and any(w in ("hashrec", "commands.cli") for w in words)


def _rollout(args: argparse.Namespace) -> int:
    from shared.config import models_dir

    path = models_dir() / PID_FILE
    try:
        pid = args.pid or int(path.read_text().strip() or "0")
        if pid <= 0:
            raise ValueError("empty: the last `hashrec serve` on this folder stopped")
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            raise ValueError(f"pid {pid} is not running: the `hashrec serve` that wrote "
                             "it was killed") from None
    except (OSError, ValueError) as error:
        print(f"hashrec rollout: no running `hashrec serve` found ({path}: {error}); give "
              "--pid", file=sys.stderr)
        return 2
    if not _is_hashrec_serve(command):  # a stale pid file: the pid is someone else's now
        print(f"hashrec rollout: pid {pid} ({path}) is not a `hashrec serve` (it runs "
              f"{b' '.join(command).decode(errors='replace').strip()!r}); a stale pid "
              "file? nothing was signalled", file=sys.stderr)
        return 2
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        print(f"hashrec rollout: cannot signal pid {pid}: {error}", file=sys.stderr)
        return 2
    print(f"asked hashrec serve (pid {pid}) to switch to the newest verified models under "
          f"its model folder; its log shows each service's switch (or why it refused one)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Waits for a model directory to appear, then checks every file against its manifest:
    the initContainer that keeps a pod from starting on a version not yet (or badly)
    written."""
    import time

    from shared.artifacts import MANIFEST, ArtifactReader

    deadline = time.monotonic() + args.wait
    while not (args.directory / MANIFEST).is_file():
        if time.monotonic() >= deadline:
            print(f"hashrec verify: {args.directory}: no {MANIFEST} after {args.wait:.0f} s",
                  file=sys.stderr)
            return 1
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.1)))
    try:
        manifest = ArtifactReader(args.directory).manifest
    except (OSError, ValueError) as error:
        print(f"hashrec verify: {error}", file=sys.stderr)
        return 1
    if args.kind and manifest.get("kind") != args.kind:
        print(f"hashrec verify: {args.directory}: a {manifest.get('kind')!r} model, not "
              f"{args.kind!r}", file=sys.stderr)
        return 1
    print(f"verified {args.directory}: {len(manifest['files'])} files match their checksums")
    return 0


def _add_verify(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "verify", help="wait for a model directory, then check its files' checksums",
        description="Exit 0 once DIRECTORY's manifest exists and every file matches its "
                    "sha256; 1 (with the reason) when it never appears within --wait or a "
                    "file does not match.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--wait", type=float, default=0.0,
                        help="seconds to wait for the directory to be written (default 0)")
    parser.add_argument("--kind", default=None,
                        help="the manifest's kind, e.g. image-to-hashtag, user-tensor-effects")
    parser.set_defaults(handler=_verify)


def _add_rollout(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "rollout", help="switch a running `hashrec serve` to the newest trained models",
        description="Sends SIGHUP to the running `hashrec serve` (its pid from "
                    "$HASHREC_MODELS/serve.pid): word and graph load and verify the newest "
                    "version beside the one they serve and keep the old one for callers "
                    "still on it; the recommender switches once they serve the new one. A "
                    "version that fails verification is refused with the reason in the log, "
                    "and the old one keeps serving. Answers name the version that served "
                    "them (model_version).")
    parser.add_argument("--pid", type=int, default=None,
                        help="the `hashrec serve` process (default: from its pid file)")
    parser.set_defaults(handler=_rollout)
