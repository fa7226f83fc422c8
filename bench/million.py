"""A million users through the sharded user service, on this machine (#29).

    python bench/million.py [--users 1000000] [--shards 3] [--user-model DIR]

1. **Users.** --users simulated users with the simulated-user generator's heavy-tailed
   activity (posts a user: round(lognormal(2.3, 0.9)) clipped to 5-200, as
   shared/data/simulated_users.py draws them), each post a real photo (the user model's
   training photos, resampled) with 1-5 hashtags drawn from the content model's
   P(h | photo) among that photo's 20 likeliest. Their profiles are made sparse
   (services/user/profiles.py) and each shard's share is written as its profile snapshot
   through the service's own code (UserHashtagLookup.restore_profiles, UpdateJournal.snapshot).
2. **Fidelity.** For 2,000 of them: the main effects' top 10 for one of their photos with
   the sparse expected uses against the exact dense ones (overlap, and how often the
   whole top 10 is the same).
3. **Shards.** --shards shard processes (python -m services.user.server), and one more
   with the trained users alone as the reference: seconds to SERVING, RSS each, bytes a
   user (the shards' RSS beyond the reference's, over the users).
4. **Score** one call at a time and 64 in flight, each to the user's own shard: p50/p99.
5. **A shard killed under load.** Updates to shard 1's users, each a new photo, SIGKILL
   after some are acknowledged; the restart's seconds to SERVING (snapshot + journal
   replay), and whether every acknowledged update is there (the user's Photos).
6. **Resharding** --shards → --shards + 1 with `reshard-users`'s code (the snapshots
   split by user, the journals routed), then the new shards started: whether sampled users
   and every acknowledged update of step 5 are where they belong.

7. **A million photos** in a model artifact (bench/million_photos.py): the photo index
   stored at training and read whole at load: size on disk, load seconds, the kNN's
   scores p99 for one photo.
8. **Recommend at --stack-photos photos** (bench/million_stack.py): the trained default
   model grown to that many photos (each community's resampled, one index a community
   shared by kNN, graph and semantic, the rest as trained) and served by `hashrec serve`
   beside the model as trained: start seconds, each service's RSS / PSS, Recommend p50 /
   p99 one call at a time, new photos and cached ones.
9. **The training driver at --driver-photos photos** (bench/train.py's measurement, the
   shipped photos resampled): its own peak RSS (VmHWM), every process's together,
   wall seconds. The default recipe's seven methods at 100,000 photos take hours on two
   cores (--driver-methods default); by default frequency, kNN and semantic train: kNN's
   and semantic's fits index every photo, what grows with the photos in the driver.
   --driver-passes N caps the iterative fits' passes over the photos ($HASHREC_FIT_PASSES):
   what each fit sends the driver (its model, its scores of the fit sample) has the shapes
   it has uncapped, so the driver's peak is the recipe's, in a fraction of the hours.

Writes out/million.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hashrec.v1 import photo_pb2, user_pb2, user_pb2_grpc
from million_photos import photo_artifact
from million_stack import recommend_at
from stack import free_port, process_rss_kb

from commands.cli.shards import user_shard_env
from services.user.journal import UpdateJournal
from services.user.lookup import KIND, UserHashtagLookup
from services.user.profiles import KEPT_EXPECTED, ROW, SparseProfiles
from services.user.shards import claim, reshard
from shared.artifacts import resolve_artifact
from shared.backbone import vision_model_id
from shared.config import FIT_PASSES_ENV, models_dir
from shared.sharding import Shard, shard_of

REPO = Path(__file__).resolve().parents[1]

CHUNK = 5000  # users made at a time


def simulated_profiles(lookup: UserHashtagLookup, n_users: int, seed: int,
                       kept_expected: int = KEPT_EXPECTED,
                       ) -> tuple[SparseProfiles, np.ndarray]:
    """(sparse profiles, posts a user) for ``n_users`` simulated users (module docstring),
    made a chunk of users at a time (the expected uses summed over all of a user's posts,
    then the largest kept)."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    features = lookup.photo_features
    logits = lookup.effects.content.logits(features)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    likeliest = np.argsort(-p, axis=1)[:, :20]
    top_p = np.take_along_axis(p, likeliest, axis=1)
    top_cdf = np.cumsum(top_p / top_p.sum(axis=1, keepdims=True), axis=1)
    n_hashtags = len(lookup.vocabulary)
    profiles = SparseProfiles(n_hashtags, kept_expected)
    posts = np.clip(np.round(rng.lognormal(2.3, 0.9, n_users)), 5, 200).astype(np.int64)
    started = time.perf_counter()
    for first in range(0, n_users, CHUNK):
        users = np.arange(first, min(first + CHUNK, n_users))
        owner = np.repeat(users - first, posts[users])
        photo = rng.integers(0, len(features), len(owner))
        n_tags = rng.integers(1, 6, len(owner))
        tag_post, tag_photo = np.repeat(np.arange(len(owner)), n_tags), np.repeat(photo, n_tags)
        picked = (top_cdf[tag_photo] < rng.random(len(tag_post))[:, None]).sum(axis=1)
        tags = likeliest[tag_photo, picked.clip(0, 19)]
        # a hashtag drawn twice for one post counts once, as an update counts it
        post_tags = np.unique(tag_post * n_hashtags + tags)
        tag_owner, tags = owner[post_tags // n_hashtags], post_tags % n_hashtags
        counts = np.bincount(tag_owner * n_hashtags + tags,
                             minlength=len(users) * n_hashtags).reshape(len(users), n_hashtags)
        # E_uh = Σ_posts n_p P(h | x_p): a users × photos matrix of n_p times P
        weights = sparse.csr_matrix((n_tags.astype(np.float32), (owner, photo)),
                                    shape=(len(users), len(features)))
        expected = np.asarray(weights @ p)
        largest = np.argpartition(-expected, kept_expected, axis=1)[:, :kept_expected]
        for row in range(len(users)):
            keep = np.union1d(np.flatnonzero(counts[row]), largest[row])
            entries = np.empty(len(keep), ROW)
            entries["id"], entries["count"] = keep, counts[row, keep]
            entries["expected"] = expected[row, keep]
            profiles.rows.append(entries)
        if first // CHUNK % 20 == 0:
            print(f"  users {first + len(users):,} of {n_users:,} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return profiles, posts


def fidelity(lookup: UserHashtagLookup, n_users: int, kept_expected: int,
             seed: int) -> dict[str, float]:
    """The main effects' top 10 for a photo of each of ``n_users`` simulated users, their
    profiles built as the service builds them (``add_post``, one post at a time: a
    hashtag dropped from the kept expected uses restarts from 0 if it comes back), against
    the exact dense counts and expected uses."""
    rng = np.random.default_rng(seed + 1)
    effects, features = lookup.effects, lookup.photo_features
    p = np.exp(effects.content.log_probabilities(features))
    likeliest = np.argsort(-p, axis=1)[:, :20]
    n_hashtags = len(lookup.vocabulary)
    sparse_rows = SparseProfiles(n_hashtags, kept_expected)
    overlaps, same, kept_sizes = [], 0, []
    for _ in range(n_users):
        row = sparse_rows.append()
        counts, expected = np.zeros(n_hashtags), np.zeros(n_hashtags)
        for _ in range(int(np.clip(round(rng.lognormal(2.3, 0.9)), 5, 200))):
            photo = int(rng.integers(len(features)))
            weights = p[photo, likeliest[photo]] / p[photo, likeliest[photo]].sum()
            accepted = sorted(set(rng.choice(likeliest[photo], size=int(rng.integers(1, 6)),
                                             p=weights).tolist()))
            counts[accepted] += 1
            expected += len(accepted) * p[photo]
            sparse_rows.add_post(row, accepted, len(accepted) * p[photo])
        kept_sizes.append(len(sparse_rows.rows[row]))
        photo_part = effects.gamma * np.log(p[int(rng.integers(len(features)))])
        true = effects.beta * effects.log_lift(counts, expected) + photo_part
        kept = effects.beta * effects.log_lift(sparse_rows.counts(row),
                                               sparse_rows.expected(row)) + photo_part
        a, b = set(np.argsort(-true)[:10]), set(np.argsort(-kept)[:10])
        overlaps.append(len(a & b) / 10)
        same += a == b
    return {"top10_overlap": float(np.mean(overlaps)), "top10_same": same / n_users,
            "users": n_users, "entries_a_user": float(np.mean(kept_sizes)),
            "built": "one post at a time (add_post), as the service builds them"}


def write_shard_snapshots(model_dir: Path, root: Path, profiles: SparseProfiles,
                          posts: np.ndarray, shards: int) -> list[int]:
    """Each shard's users (the trained ones and its simulated ones) as its snapshot."""
    ids = [f"sim:{i}" for i in range(len(profiles))]
    owner = np.fromiter((shard_of(u, shards) for u in ids), np.int64, len(ids))
    counts = []
    for index in range(shards):
        lookup = UserHashtagLookup.load(model_dir)
        mine = np.flatnonzero(owner == index)
        trained, _ = lookup.profiles()
        part = SparseProfiles(len(lookup.vocabulary))
        part.rows = lookup.user_hashtags.rows + [profiles.rows[i] for i in mine]
        users = lookup.user_ids + [ids[i] for i in mine]
        arrays = {"user_vectors": np.vstack([trained["user_vectors"],
                                             np.repeat(lookup.mean_user[None], len(mine), 0)]),
                  "post_counts": np.concatenate([trained["post_counts"],
                                                 posts[mine].astype(np.float64)]),
                  **part.arrays()}
        lookup.restore_profiles(arrays, {"users": users, "added_photo_ids": []})
        folder = root / f"shard-{index}"
        claim(folder, Shard(index, shards))
        UpdateJournal(folder / model_dir.name).snapshot(lookup)
        counts.append(len(mine))
        del lookup, part, arrays
    return counts


def start(model_dir: Path, root: Path, index: int, count: int, port: int) -> subprocess.Popen:
    env = {**os.environ, "HASHREC_USER_MODEL_DIR": str(model_dir), "PYTHONPATH": str(REPO),
           "HASHREC_THREADS": "1", **user_shard_env(index, count, "127.0.0.1", port, 0, root)}
    process = subprocess.Popen([sys.executable, "-m", "services.user.server"], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process.spawned = time.perf_counter()  # type: ignore[attr-defined]
    return process


def until_serving(port: int, process: subprocess.Popen, timeout: float = 600) -> float:
    """Seconds from the process's start to SERVING (its snapshot restored, journal
    replayed)."""
    started = process.spawned  # type: ignore[attr-defined]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                raise SystemExit(f"the shard on {port} exited ({process.returncode})")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - started
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"the shard on {port} did not serve in {timeout} s")


def score_latency(ports: list[int], features: np.ndarray, users: list[str], calls: int,
                  in_flight: int) -> dict[str, float]:
    """p50 / p99 ms of Score, each call to its user's shard, ``in_flight`` at a time."""
    async def run() -> list[float]:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
        stubs = [user_pb2_grpc.UserProfileServiceStub(c) for c in channels]
        rng = np.random.default_rng(1)
        times: list[float] = []
        # each call a photo no call sent before (a stored one with noise), so the user
        # service's memory of recent photos (PHOTO_MEMORY) saves nothing
        queue = [(users[i], features[i % len(features)] + rng.normal(
                  0, 0.01, features.shape[1]).astype(np.float32))
                 for i in rng.integers(0, len(users), calls)]
        version = vision_model_id()

        async def worker() -> None:
            while queue:
                user, photo = queue.pop()
                request = user_pb2.UserScoreRequest(photo=photo_pb2.PhotoDescription(
                    features=photo.tolist(), vision_model_version=version), user_id=user, k=10)
                began = time.perf_counter()
                await stubs[shard_of(user, len(stubs))].Score(request, timeout=30)
                times.append(1000 * (time.perf_counter() - began))
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        for channel in channels:
            await channel.close()
        return times
    times = np.array(asyncio.run(run()))
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "calls": len(times), "in_flight": in_flight}


def kill_under_load(model_dir: Path, root: Path, ports: list[int], processes: list,
                    features: np.ndarray, users: list[str], shards: int) -> dict:
    """Updates to shard 1's users until SIGKILL; the restart's seconds; what was kept."""
    mine = [u for u in users if shard_of(u, shards) == 1][:200]
    acknowledged: list[tuple[str, str]] = []
    stop = threading.Event()
    version = vision_model_id()
    vocabulary = json.loads((model_dir / "manifest.json").read_text())["vocabulary"]

    def load() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
            stub = user_pb2_grpc.UserProfileServiceStub(channel)
            n = 0
            while not stop.is_set():
                user, photo_id = mine[n % len(mine)], f"bench-{n}"
                try:
                    stub.Update(user_pb2.UserUpdateRequest(
                        user_id=user, photo_id=photo_id, hashtags=[vocabulary[n % 50]],
                        photo=photo_pb2.PhotoDescription(
                            features=features[n % len(features)].tolist(),
                            vision_model_version=version)), timeout=10)
                    acknowledged.append((user, photo_id))
                except grpc.RpcError:
                    pass
                n += 1

    worker = threading.Thread(target=load)
    worker.start()
    while len(acknowledged) < 300:
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGKILL)
    processes[1].wait()
    stop.set()
    worker.join()
    processes[1] = start(model_dir, root, 1, shards, ports[1])
    replay = until_serving(ports[1], processes[1])
    with grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
        stub = user_pb2_grpc.UserProfileServiceStub(channel)
        kept = {u: set(stub.Photos(user_pb2.UserPhotosRequest(user_id=u), timeout=30).photo_ids)
                for u in {u for u, _ in acknowledged}}
    lost = sum(photo not in kept[user] for user, photo in acknowledged)
    return {"acknowledged": len(acknowledged), "lost": lost, "restart_to_serving_s": replay,
            "updates": acknowledged}


def after_reshard(model_dir: Path, root: Path, count: int, users: list[str],
                  features: np.ndarray, acknowledged: list[tuple[str, str]]) -> dict:
    """The new shards started on the resharded state: seconds to SERVING, whether sampled
    users are still known on their new shard, and whether every acknowledged update is."""
    ports = [free_port() for _ in range(count)]
    processes = [start(model_dir, root, i, count, ports[i]) for i in range(count)]
    try:
        ready = [until_serving(p, q) for p, q in zip(ports, processes, strict=True)]
        channels = [grpc.insecure_channel(f"127.0.0.1:{p}") for p in ports]
        stubs = [user_pb2_grpc.UserProfileServiceStub(c) for c in channels]
        version = vision_model_id()
        sample = users[:500]
        known = sum(stubs[shard_of(u, count)].Score(user_pb2.UserScoreRequest(
            user_id=u, k=5, photo=photo_pb2.PhotoDescription(
                features=features[0].tolist(), vision_model_version=version)),
            timeout=30).known_user for u in sample)
        photos = {u: set(stubs[shard_of(u, count)].Photos(
            user_pb2.UserPhotosRequest(user_id=u), timeout=30).photo_ids)
            for u in {u for u, _ in acknowledged}}
        for channel in channels:
            channel.close()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    return {"start_to_serving_s": ready, "sampled_users_known": f"{known} of {len(sample)}",
            "acknowledged_updates_lost": sum(p not in photos[u] for u, p in acknowledged)}


def users_part(args: argparse.Namespace) -> dict:
    """Steps 1-6 of the module docstring."""
    model_dir = resolve_artifact(args.user_model or models_dir() / "user", KIND)
    lookup = UserHashtagLookup.load(model_dir)
    report: dict = {"users": args.users, "shards": args.shards, "model": model_dir.name,
                    "vocabulary": len(lookup.vocabulary), "kept_expected": args.kept_expected}
    print(f"making {args.users:,} simulated users' profiles ...", flush=True)
    started = time.perf_counter()
    profiles, posts = simulated_profiles(lookup, args.users, args.seed, args.kept_expected)
    report["make_s"] = time.perf_counter() - started
    report["posts_mean"] = float(posts.mean())
    report["profile_bytes_a_user"] = profiles.nbytes / len(profiles)
    report["dense_bytes_a_user"] = 2 * 8 * len(lookup.vocabulary)
    report["entries_a_user"] = float(np.mean([len(r) for r in profiles.rows]))
    report["fidelity"] = fidelity(lookup, 2000, args.kept_expected, args.seed)
    print(json.dumps(report), flush=True)
    if args.profiles_only:
        return report
    with tempfile.TemporaryDirectory() as temporary:
        root, reference_root = Path(temporary) / "state", Path(temporary) / "reference"
        started = time.perf_counter()
        report["shard_users"] = write_shard_snapshots(model_dir, root, profiles, posts,
                                                      args.shards)
        report["snapshots_s"] = time.perf_counter() - started
        del profiles
        ports = [free_port() for _ in range(args.shards + 1)]
        processes = [start(model_dir, root, i, args.shards, ports[i])
                     for i in range(args.shards)]
        processes.append(start(model_dir, reference_root, 0, 1, ports[-1]))
        report["start_to_serving_s"] = [until_serving(p, q) for p, q in
                                        zip(ports, processes, strict=True)]
        rss = [process_rss_kb(q.pid) / 1024 for q in processes]
        report["rss_mb"] = {"shards": rss[:-1], "reference (trained users only)": rss[-1]}
        report["rss_mb_all_shards"] = sum(rss[:-1])
        report["bytes_a_user_rss"] = (sum(rss[:-1]) - args.shards * rss[-1]) * 2**20 / args.users
        users = [f"sim:{i}" for i in np.random.default_rng(2).integers(0, args.users, 5000)]
        features = lookup.photo_features[:256]
        report["score_one_at_a_time"] = score_latency(ports[:-1], features, users, 1000, 1)
        report["score_64_in_flight"] = score_latency(ports[:-1], features, users, 4000, 64)
        print(json.dumps(report), flush=True)
        report["kill_under_load"] = kill_under_load(model_dir, root, ports, processes,
                                                    features, users, args.shards)
        acknowledged = report["kill_under_load"].pop("updates")
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        started = time.perf_counter()
        plan = reshard(root, args.shards + 1)
        report["reshard"] = {"from": args.shards, "to": args.shards + 1,
                             "records": sum(plan["records"]),
                             "snapshot_users": plan["snapshot_users"],
                             "seconds": time.perf_counter() - started}
        report["after_reshard"] = after_reshard(model_dir, root, args.shards + 1, users,
                                                features, acknowledged)
    return report


def driver_part(photos: int, methods: str | None, passes: int | None = None) -> dict:
    """The training driver's memory at ``photos`` photos (bench/train.py's ``measure``);
    ``passes``: $HASHREC_FIT_PASSES for the training (its fits' CPU is then not the
    recipe's; what they send the driver has the same shapes)."""
    from train import measure, warm_feature_store

    warm_feature_store()
    chosen = None if methods in (None, "", "default") else tuple(methods.split(","))
    capped = f", at most {passes} passes a fit" if passes else ""
    print(f"the training driver on {photos:,} photos ({methods or 'the default recipe'}"
          f"{capped}; the posts with a hashtag in the vocabulary train) ...", flush=True)
    if passes:
        os.environ[FIT_PASSES_ENV] = str(passes)  # the training's process inherits it
    with tempfile.TemporaryDirectory(prefix="hashrec-bench-driver-") as scratch:
        row = measure(photos, None, Path(scratch), chosen)
    return {"photos": row["photos"], "methods": list(row["fit_cpu_s"]),
            "fit_passes": row["fit_passes"],
            "driver_peak_rss_mib": row["driver_peak_rss_mib"],
            "all_processes_peak_rss_mib": row["peak_rss_mib"], "wall_s": row["wall_s"],
            "stage_s": row["stage_s"], "driver_rss_mib": row["driver_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="0: not measured")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--user-model", type=Path, default=None,
                        help="default: the newest under $HASHREC_MODELS/user")
    parser.add_argument("--photos", type=int, default=1_000_000,
                        help="the photo artifact's size (bench/million_photos.py); 0: not "
                             "measured")
    parser.add_argument("--image-model", type=Path, default=None,
                        help="whose photos are resampled; default: the newest under "
                             "$HASHREC_MODELS")
    parser.add_argument("--stack-photos", type=int, default=1_000_000,
                        help="the served model's photos for Recommend through the whole "
                             "stack (bench/million_stack.py); 0: not measured")
    parser.add_argument("--stack-calls", type=int, default=200,
                        help="Recommend calls of each kind (new, cached) a model")
    parser.add_argument("--driver-photos", type=int, default=100_000,
                        help="photos the training driver's peak is measured at; 0: not "
                             "measured")
    parser.add_argument("--driver-methods", default="frequency,knn,semantic",
                        help="methods trained for it, comma-separated, or 'default' for "
                             "the default recipe's seven (hours at 100,000 photos on two "
                             "cores)")
    parser.add_argument("--driver-passes", type=int, default=None,
                        help="$HASHREC_FIT_PASSES for it: the iterative fits' passes over "
                             "the photos capped, so the default recipe fits in hours fewer; "
                             "what the fits send the driver keeps its shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kept-expected", type=int, default=KEPT_EXPECTED,
                        help="for the profiles' bytes and fidelity only (the services keep "
                             "services/user/profiles.py's KEPT_EXPECTED)")
    parser.add_argument("--profiles-only", action="store_true",
                        help="stop after the profiles' bytes and fidelity")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "million.json")
    args = parser.parse_args()
    report = {"users": users_part(args)} if args.users else {}
    if args.photos and not args.profiles_only:
        print(f"a {args.photos:,}-photo artifact ...", flush=True)
        report["photos"] = photo_artifact(args.photos, args.image_model, args.seed)
    if args.stack_photos and not args.profiles_only:
        print(f"Recommend on a model of {args.stack_photos:,} photos ...", flush=True)
        report["recommend"] = recommend_at(args.stack_photos, args.stack_calls,
                                           args.image_model, args.user_model, args.seed)
    if args.driver_photos and not args.profiles_only:
        report["training_driver"] = driver_part(args.driver_photos, args.driver_methods,
                                                 args.driver_passes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    shown = {part: {k: v for k, v in values.items() if k != "driver_rss_mib"}
             for part, values in report.items()}  # the RSS series: in the file alone
    print(json.dumps(shown, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
