"""Chaos under load: `hashrec serve` (one process per service, the gateway in front, Redis
for the caches and rate limits) takes Recommend and Feedback from several signed-in users
through the HTTP gateway while faults land at random; at the end, whether every
acknowledged update is in its user's profile exactly once, and whether any process was
left behind.

    python bench/chaos.py [--minutes 10] [--every 20] [--users 4] [--seed 0]
                          [--models DIR --user-model DIR]

Models: --models / --user-model, else small ones trained first (160 food photos, 30
simulated users: about a minute), copied into a scratch folder whose versions the
rollouts add to. Faults, one every --every seconds (seeded):

    kill       SIGKILL or SIGTERM one service (vision, word, graph, user, recommender,
               gateway); the supervisor restarts it
    rollout    a good new version of the image and the user model, then `hashrec rollout`
    tampered   a new version with one file altered, then `hashrec rollout` (refused)
    full-disk  the user service may not grow its journal for 3 s (prlimit RLIMIT_FSIZE)
    redis      Redis killed and started again
    supervisor the supervisor SIGKILLed (its children must die with it) and started again

Each user's client sends a Feedback with a fresh request id after each answer; one that
fails is retried later with the same id, and at the end every request id is retried until
acknowledged (idempotent: applied once). Then each user's post count must equal their
distinct request ids. Prints the failed calls by cause (vision restarts apart), the time
to whole answers after each fault, and writes out/chaos.json. Loopback only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.config import data_root, setup_logging  # noqa: E402

SERVICES = ("vision", "word", "graph", "user", "recommender", "gateway")
FAULTS = ("kill", "rollout", "tampered", "full-disk", "redis", "supervisor")


def free_run(count: int) -> int:
    for _ in range(200):
        base = random.randrange(10_000, 30_000)
        try:
            for offset in range(count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports in a row")


def train_small(folder: Path) -> tuple[Path, Path]:
    """A small image model (160 food photos) and user model (30 simulated users)."""
    from commands.engine import LocalEngine
    from commands.experiments.image2tag import METHODS
    from commands.train import train_image_models
    from services.user.model import TensorParams
    from services.user.train import train_user_model
    from services.vision.model import VisionModel
    from services.vision.store import FeatureStore
    from shared.batching import usable_cores
    from shared.data.normalize import normalize_post_hashtags
    from shared.data.readers import read_posts
    from shared.data.simulated_users import source_posts

    store = FeatureStore(folder / "features", VisionModel(device="cpu"))
    posts = normalize_post_hashtags(read_posts(f"food:{data_root() / 'food'}"))[:160]
    trained = train_image_models(posts, store, folder / "image", methods=METHODS,
                                 min_count=2, folds=3, progress=False,
                                 engine=LocalEngine(usable_cores()))
    images = {p.image for p in posts}
    sources = source_posts(data_root())
    _, user_dir = train_user_model(
        folder / "user", store, n_users=30, progress=False,
        params=TensorParams(16, 16, 4, epochs=5),
        sources=[*sources[::25], *(p for p in sources if p.image in images)],
        image_model=trained.directory)
    return trained.directory, user_dir


def new_version(source: Path, stamp: str, tamper: bool = False) -> Path:
    target = source.parent / f"{stamp}-{'tampered' if tamper else 'good'}"
    shutil.copytree(source, target)
    if tamper:
        manifest = json.loads((target / "manifest.json").read_text())
        victim = target / next(f for f in manifest["files"] if f.endswith(".npy"))
        victim.write_bytes(victim.read_bytes() + b"\0")
    return target


@dataclass
class Serve:
    """`hashrec serve` as a child of ours, restartable, its output read on a thread."""

    env: dict[str, str]
    port: int
    http_port: int
    extra: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    every_pid: set[int] = field(default_factory=set)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        seen = len(self.lines)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "commands.cli", "serve", "--port", str(self.port),
             "--http-port", str(self.http_port), *self.extra], cwd=REPO, env=self.env,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + 300
        while not any(line.startswith("serving ") for line in self.lines[seen:]):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("hashrec serve did not start:\n" + "\n".join(
                    self.lines[-30:]))
            time.sleep(0.2)

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip())
            started = re.match(r".*hashrec\.serve: (\w+): started \(pid (\d+)\)", line)
            if started:
                self.pids[started[1]] = int(started[2])
                self.every_pid.add(int(started[2]))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(120)


@dataclass
class Call:
    at: float
    kind: str
    outcome: str  # "ok", "degraded" or the HTTP status / error


class Clients:
    """Signed-in users, each on a thread: recommend, then feedback with a fresh id."""

    def __init__(self, url: str, users: int, photos: list[bytes], seed: int) -> None:
        self.url, self.photos = url, photos
        self.calls: list[Call] = []
        self.pending: dict[str, list[tuple[str, list[str], bytes]]] = {}
        self.acknowledged: dict[str, set[str]] = collections.defaultdict(set)
        self.kept: dict[str, list[str]] = {}  # hashtags a user's profile took
        self.stop = threading.Event()
        self.names = [f"chaos-{seed}-{i}" for i in range(users)]
        self.cookies: dict[str, httpx.Cookies] = {}
        self.threads = [threading.Thread(target=self._run, args=(name, seed + i), daemon=True)
                        for i, name in enumerate(self.names)]

    def sign_up(self) -> None:
        for name in self.names:
            with httpx.Client(base_url=self.url, timeout=30) as client:
                response = client.post("/api/account/signup", json={
                    "name": name, "password": "chaos password"})
                response.raise_for_status()
                self.cookies[name] = client.cookies
            self.pending[name] = []

    def _client(self, name: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15, cookies=self.cookies[name])

    def feedback(self, client: httpx.Client, name: str, request_id: str,
                 hashtags: list[str], photo: bytes) -> str:
        """"ok", "refused" (the request itself is wrong: no hashtag the profile knows;
        not applied, not retried) or "failed" (retried later with the same id)."""
        try:
            response = client.post("/api/feedback", files={
                "image": ("p.jpg", photo, "image/jpeg")}, data={
                "hashtags": ",".join(hashtags), "request_id": request_id})
            outcome = "ok" if response.status_code == 200 else str(response.status_code)
        except httpx.HTTPError as error:
            outcome = type(error).__name__
        if outcome == "400":
            return "refused"
        self.calls.append(Call(time.monotonic(), "feedback", outcome))
        if outcome == "ok":
            self.acknowledged[name].add(request_id)
            self.kept[name] = response.json()["accepted"]
            return "ok"
        return "failed"

    def _run(self, name: str, seed: int) -> None:
        rng = random.Random(seed)
        with self._client(name) as client:
            while not self.stop.is_set():
                # new to every cache (bytes after the JPEG's end, which decoders ignore):
                # each call reaches every service
                photo = rng.choice(self.photos) + f"\0chaos{rng.random()}".encode()
                try:
                    response = client.post("/api/recommend", files={
                        "image": ("p.jpg", photo, "image/jpeg")}, data={"k": "5"})
                    if response.status_code == 200:
                        answer = response.json()
                        outcome = "degraded" if answer["degraded"] else "ok"
                    else:
                        outcome, answer = str(response.status_code), None
                except httpx.HTTPError as error:
                    outcome, answer = type(error).__name__, None
                self.calls.append(Call(time.monotonic(), "recommend", outcome))
                if answer is None:
                    time.sleep(0.5)
                    continue
                hashtags = [h["hashtag"] for h in answer["hashtags"][:3]]
                request_id = str(uuid.uuid4())
                if self.feedback(client, name, request_id, hashtags, photo) == "failed":
                    self.pending[name].append((request_id, hashtags, photo))
                time.sleep(rng.uniform(0.1, 0.4))

    def reconcile(self, deadline: float) -> int:
        """Every failed feedback retried with its own id until acknowledged."""
        left = 0
        for name, pending in self.pending.items():
            with self._client(name) as client:
                for request_id, hashtags, photo in pending:
                    while request_id not in self.acknowledged[name] and \
                            time.monotonic() < deadline:
                        if self.feedback(client, name, request_id, hashtags,
                                         photo) == "refused":
                            break
                        time.sleep(0.2)
                    left += request_id not in self.acknowledged[name]
        return left

    def posts(self, name: str) -> int:
        """The user's post count as the service holds it: a last feedback's answer, less
        that one."""
        with self._client(name) as client:
            response = client.post("/api/feedback", files={
                "image": ("p.jpg", self.photos[0], "image/jpeg")}, data={
                "hashtags": ",".join(self.kept[name]), "request_id": str(uuid.uuid4())})
            response.raise_for_status()
            return response.json()["posts"] - 1


def whole_again(calls: list[Call], since: float) -> float | None:
    recent = [c for c in calls if c.kind == "recommend" and c.at >= since]
    for i in range(len(recent) - 2):
        if all(c.outcome == "ok" for c in recent[i:i + 3]):
            return recent[i].at - since
    return None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="hashrec-chaos-"))
    if args.models and args.user_model:
        image = Path(shutil.copytree(args.models, scratch / "image" / args.models.name))
        user = Path(shutil.copytree(args.user_model, scratch / "user" / args.user_model.name))
    else:
        print("training small models (about a minute)…", flush=True)
        image, user = train_small(scratch)
    redis_port = free_run(1)
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                              "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL)
    port = free_run(5)
    env = {**os.environ, "HASHREC_MODELS": str(scratch), "PYTHONUNBUFFERED": "1",
           "HASHREC_USER_STATE": str(scratch / "state"),
           "HASHREC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "HASHREC_GATEWAY_RATE_LIMITS": "off", "HASHREC_BACKEND_DEADLINE_S": "5",
           **{f"HASHREC_{n.upper()}_METRICS_PORT": "0" for n in SERVICES[:5]}}
    # --models / --user-model as folders: a restart takes the newest verified version
    serve = Serve(env, port, free_run(1),
                  ["--models", str(image.parent), "--user-model", str(user.parent)])
    serve.start()
    photos = [p.read_bytes() for p in sorted((data_root() / "food" / "images").glob("*.jpg"))
              [200:232]]
    clients = Clients(f"http://127.0.0.1:{serve.http_port}", args.users, photos, args.seed)
    clients.sign_up()
    for thread in clients.threads:
        thread.start()
    faults: list[dict] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    stamp = 0
    while time.monotonic() + args.every < end:
        time.sleep(args.every)
        kind = rng.choice(FAULTS)
        at = time.monotonic()
        detail = ""
        if kind == "kill":
            name = rng.choice(SERVICES)
            how = rng.choice((signal.SIGKILL, signal.SIGTERM))
            detail = f"{how.name} {name}"
            os.kill(serve.pids[name], how)
        elif kind in ("rollout", "tampered"):
            stamp += 1
            name = time.strftime("%Y%m%d-%H%M%S") + f"-{stamp:03d}"
            new_version(image, name, tamper=kind == "tampered")
            new_version(user, name, tamper=False)
            subprocess.run([sys.executable, "-m", "commands.cli", "rollout"], cwd=REPO,
                           env=env, capture_output=True, timeout=60)
            detail = name
        elif kind == "full-disk":
            pid = serve.pids["user"]
            journal = scratch / "state" / "updates.jsonl"
            size = journal.stat().st_size if journal.exists() else 0
            _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (max(size, 1), hard))
            time.sleep(3)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
        elif kind == "redis":
            redis.kill()
            redis.wait()
            time.sleep(1)
            redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL)
        elif kind == "supervisor":
            children = list(serve.pids.values())
            serve.process.kill()
            serve.process.wait()
            deadline = time.monotonic() + 30
            while any(alive(p) for p in children) and time.monotonic() < deadline:
                time.sleep(0.2)
            detail = f"{sum(alive(p) for p in children)} orphans"
            serve.start()
        faults.append({"fault": kind, "detail": detail, "at": round(at - started, 1)})
        print(f"{at - started:6.0f} s  {kind:10s} {detail}", flush=True)
    clients.stop.set()
    for thread in clients.threads:
        thread.join(60)
    unacknowledged = clients.reconcile(time.monotonic() + 120)
    counts = {name: (clients.posts(name), len(clients.acknowledged[name]))
              for name in clients.names}
    serve.stop()
    time.sleep(2)
    orphans = [pid for pid in serve.every_pid if alive(pid)]
    redis.kill()
    for fault in faults:
        took = whole_again(clients.calls, started + fault["at"])
        fault["whole_after_s"] = None if took is None else round(took, 1)
    causes = collections.Counter()
    for call in clients.calls:
        if call.outcome != "ok":
            last = max((f for f in faults if started + f["at"] <= call.at),
                       key=lambda f: f["at"], default=None)
            cause = "none" if last is None else last["fault"] + (
                " vision" if last["detail"].endswith("vision") else "")
            causes[f"{call.kind} {call.outcome} after {cause}"] += 1
    result = {"minutes": args.minutes, "users": args.users, "calls": len(clients.calls),
              "faults": faults, "not_ok_by_cause": dict(causes.most_common()),
              "posts_vs_acknowledged": counts, "unacknowledged": unacknowledged,
              "lost_or_doubled": sum(posts != acked for posts, acked in counts.values()),
              "orphans": orphans}
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def report(result: dict) -> None:
    print(f"\n{result['calls']:,} calls from {result['users']} users in "
          f"{result['minutes']} min; {len(result['faults'])} faults")
    print("\n| fault | at (s) | detail | whole again after (s) |\n|---|---|---|---|")
    for fault in result["faults"]:
        print(f"| {fault['fault']} | {fault['at']} | {fault['detail']} | "
              f"{fault['whole_after_s']} |")
    print("\n| calls not whole or failed | count |\n|---|---|")
    for cause, count in result["not_ok_by_cause"].items():
        print(f"| {cause} | {count} |")
    print(f"\nacknowledged updates lost or doubled: {result['lost_or_doubled']} "
          f"(posts vs acknowledged per user: {result['posts_vs_acknowledged']}); "
          f"never acknowledged: {result['unacknowledged']}; orphans: {len(result['orphans'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--user-model", type=Path, default=None)
    args = parser.parse_args()
    setup_logging("WARNING")
    random.seed(args.seed)
    result = run(args)
    out = REPO / "out"
    out.mkdir(exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(result, indent=1))
    report(result)


if __name__ == "__main__":
    main()
