"""`hashrec serve` as it runs for real traffic: one process per service, supervised, and
faults survived under a steady load of Recommend calls (some with users). Every test is
bounded in time and talks over loopback only."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from hashrec.v1 import (
    recommender_pb2,
    recommender_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)

from shared.grpc_server import CHANNEL_OPTIONS
from shared.scoring import describe
from tests.servers import certificates, free_ports_in_a_row

SERVICES = ("vision", "word", "graph", "user", "recommender")
#: the caller's deadline for one Recommend under load
DEADLINE_S = 10.0
#: the issue's bound: answers are whole again within this after a restart
RECOVERY_S = 30.0


class Served:
    """A running `hashrec serve` (multi-process) and what its output says."""

    def __init__(self, process: subprocess.Popen, port: int, folder: Path) -> None:
        self.process, self.port, self.folder = process, port, folder
        self.lines: list[str] = []
        self.pids: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            started = re.match(r".*hashrec\.serve: (\w+): started \(pid (\d+)\)", line)
            if started:
                self.pids[started[1]] = int(started[2])

    def wait_for(self, pattern: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; output:\n"
                             + "\n".join(self.lines[-40:]))

    def kill(self, service: str, sig: signal.Signals) -> int:
        pid = self.pids[service]
        os.kill(pid, sig)
        return pid

    def restarted(self, service: str, old_pid: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.pids.get(service) == old_pid and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.pids[service] != old_pid, f"{service} was not restarted"


@contextlib.contextmanager
def serving(stack: dict, folder: Path, models: Path | None = None,
            **env: str) -> Iterator[Served]:
    """`hashrec serve` over the stack fixture's small models (or ``models``), every
    service its own process; metrics on free ports; the user journal and the pid file in
    ``folder``; ``env`` on top."""
    port = free_ports_in_a_row(5)
    environment = {**os.environ, "HASHREC_MODELS": str(folder / "models"),
                   "HASHREC_USER_STATE": str(folder / "state"),
                   "HASHREC_BACKEND_DEADLINE_S": "2", "PYTHONUNBUFFERED": "1",
                   **{f"HASHREC_{name.upper()}_METRICS_PORT": "0" for name in SERVICES},
                   **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "serve", "--port", str(port), "--http-port",
         "0", "--models", str(models or stack["trained"].directory), "--user-model",
         str(stack["user_dir"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    served = Served(process, port, folder)
    try:
        served.wait_for(r"^serving hashrec\.v1\.RecommenderService")
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def served(stack: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(stack, tmp_path_factory.mktemp("served")) as running:
        yield running


@dataclass
class Outcome:
    at: float
    seconds: float
    code: str  # "OK" or the gRPC status name
    degraded_reasons: tuple[str, ...] = ()
    version: str = ""  # the model version that answered


@dataclass
class Load:
    """Recommend calls back to back from a thread (every third with a known user), each
    with the caller's deadline; what each call got. Each call's photo is new to every cache
    (a few bytes after the JPEG's end, which decoders ignore), so every call reaches every
    service."""

    target: str
    image: bytes
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE_S + 5)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
            calls = 0
            while not self._stop.is_set():
                calls += 1
                started = time.monotonic()
                try:
                    reply = stub.Recommend(recommender_pb2.RecommendRequest(
                        image=self.image + f"\0load-{time.time_ns()}".encode(),
                        user_id="u00003" if calls % 3 == 0 else "", k=5),
                        timeout=DEADLINE_S)
                    outcome = Outcome(started, time.monotonic() - started, "OK",
                                      tuple(reply.degraded_reasons), reply.model_version)
                except grpc.RpcError as error:
                    outcome = Outcome(started, time.monotonic() - started, error.code().name)
                self.outcomes.append(outcome)
                time.sleep(0.02)

    def since(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.at >= moment]

    def wait_until_whole(self, since: float, timeout: float) -> float:
        """Seconds from ``since`` to the first of three whole answers in a row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = self.since(since)
            for i in range(len(recent) - 2):
                if all(o.code == "OK" and not o.degraded_reasons for o in recent[i:i + 3]):
                    return recent[i].at - since
            time.sleep(0.2)
        raise AssertionError(f"answers not whole {timeout} s after the fault: "
                             f"{[(o.code, o.degraded_reasons) for o in self.since(since)[-5:]]}")


def _photo(data_dir: Path) -> bytes:
    return (data_dir / "food" / "images" / "0000008.jpg").read_bytes()


def _children_of(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                        b"\0", b" ").decode()
            except (OSError, IndexError):
                continue
    return found


def _fault_under_load(served: Served, data_dir: Path, service: str,
                      sig: signal.Signals) -> tuple[Load, float, float]:
    """Sends ``sig`` to ``service`` while Recommend calls run, waits for the supervisor's
    restart and for whole answers again: (the load, when the fault came, seconds until
    answers were whole again)."""
    with Load(f"127.0.0.1:{served.port}", _photo(data_dir)) as load:
        load.wait_until_whole(time.monotonic() - 1, 30)
        fault = time.monotonic()
        old = served.kill(service, sig)
        served.restarted(service, old)
        recovered = load.wait_until_whole(fault, RECOVERY_S + 30)
    during = load.since(fault)
    print(f"\nfault table: {sig.name} {service}: {len(during)} calls, "
          f"{sum(o.code != 'OK' for o in during)} failed, "
          f"{sum(bool(o.degraded_reasons) for o in during) / max(len(during), 1):.1%} "
          f"degraded, whole again after {recovered:.1f} s")
    return load, fault, recovered


def test_every_service_runs_in_its_own_named_process(served: Served) -> None:
    children = _children_of(served.process.pid)
    for name in SERVICES:
        assert served.pids[name] in children
        assert f"-m services.{name}.server" in children[served.pids[name]]
    assert len({served.pids[name] for name in SERVICES}) == len(SERVICES)


@pytest.mark.parametrize("service", ["word", "graph", "user"])
def test_a_killed_backend_degrades_answers_then_they_are_whole_again(
        served: Served, data_dir: Path, service: str) -> None:
    load, fault, recovered = _fault_under_load(served, data_dir, service, signal.SIGKILL)
    during = load.since(fault)
    assert all(o.code == "OK" for o in during), {o.code for o in during}
    assert all(o.seconds < DEADLINE_S for o in during)
    assert any(any(r.startswith(service) for r in o.degraded_reasons) for o in during)
    assert recovered < RECOVERY_S + 15  # restart backoff 1 s, then loading the model


def test_a_killed_vision_service_is_unavailable_at_once_then_recovers(
        served: Served, data_dir: Path) -> None:
    load, fault, _ = _fault_under_load(served, data_dir, "vision", signal.SIGKILL)
    failed = [o for o in load.since(fault) if o.code != "OK"]
    assert failed and {o.code for o in failed} == {"UNAVAILABLE"}
    assert max(o.seconds for o in failed) < DEADLINE_S  # never a hang past the deadline


def test_sigterm_to_a_service_fails_no_call(served: Served, data_dir: Path) -> None:
    load, fault, _ = _fault_under_load(served, data_dir, "graph", signal.SIGTERM)
    assert all(o.code == "OK" for o in load.since(fault))
    served.wait_for(r"graph: exited with exit code 0")  # it drained, then left


def test_the_user_service_killed_mid_feedback_keeps_every_acknowledged_update(
        served: Served, data_dir: Path) -> None:
    target = f"127.0.0.1:{served.port}"
    with grpc.insecure_channel(f"127.0.0.1:{served.port + 1}") as channel:
        photo = describe(vision_pb2_grpc.VisionServiceStub(channel).Embed(
            vision_pb2.EmbedRequest(image=_photo(data_dir), top_labels=5), timeout=30))
    with grpc.insecure_channel(f"127.0.0.1:{served.port + 4}") as channel:
        known = user_pb2_grpc.UserProfileServiceStub(channel).Score(
            user_pb2.UserScoreRequest(photo=photo, k=1), timeout=10).hashtags[0].hashtag
    users = [f"journal-{i}" for i in range(4)]
    acknowledged = dict.fromkeys(users, 0)
    refused = dict.fromkeys(users, 0)
    stop = threading.Event()

    def feedback() -> None:
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
            calls = 0
            while not stop.is_set():
                user = users[calls % len(users)]
                calls += 1
                try:
                    stub.Feedback(recommender_pb2.FeedbackRequest(
                        image=_photo(data_dir), user_id=user, hashtags=[known]),
                        timeout=DEADLINE_S)
                    acknowledged[user] += 1
                except grpc.RpcError:
                    refused[user] += 1  # journaled or not: the caller was not told OK

    thread = threading.Thread(target=feedback, daemon=True)
    thread.start()
    time.sleep(2.0)
    old = served.kill("user", signal.SIGKILL)
    served.restarted("user", old)
    time.sleep(3.0)
    stop.set()
    thread.join(timeout=DEADLINE_S + 5)
    assert sum(acknowledged.values()) > 0 and sum(refused.values()) > 0
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
        deadline = time.monotonic() + RECOVERY_S
        for user in users:
            while True:
                try:
                    posts = stub.Feedback(recommender_pb2.FeedbackRequest(
                        image=_photo(data_dir), user_id=user, hashtags=[known]),
                        timeout=DEADLINE_S).posts - 1
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "the user service did not come back"
                    time.sleep(0.5)
            # Every acknowledged update is there once; a refused one at most once.
            assert acknowledged[user] <= posts <= acknowledged[user] + refused[user], user


def test_a_full_journal_refuses_feedback_naming_the_cause_and_acknowledges_nothing(
        served: Served, stack: dict, data_dir: Path) -> None:
    """The user service's journal cannot grow (a file-size limit set on the running
    process: what a full disk does to a write): Feedback answers an error naming the cause,
    no update it answered with an error is learned, Recommend keeps answering, and once the
    journal can grow again Feedback works."""
    import resource

    target = f"127.0.0.1:{served.port}"
    user, image = "full-journal", _photo(data_dir)
    journal = served.folder / "state" / "updates.jsonl"  # every user-model version's

    def feedback(stub: recommender_pb2_grpc.RecommenderServiceStub) -> int:
        hashtag = stack["trained"].vocabulary[0]
        return stub.Feedback(recommender_pb2.FeedbackRequest(
            image=image, user_id=user, hashtags=[hashtag]), timeout=DEADLINE_S).posts

    pid = served.pids["user"]
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
        before = feedback(stub)
        size = journal.stat().st_size
        with Load(target, image) as load:
            load.wait_until_whole(time.monotonic() - 1, 30)
            fault = time.monotonic()
            _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, hard))
            try:
                for _ in range(5):
                    with pytest.raises(grpc.RpcError) as refused:
                        feedback(stub)
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "cannot write the update journal" in refused.value.details()
                    assert "File too large" in refused.value.details()
                time.sleep(1.0)  # Recommend calls while the journal is still full
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
        during = load.since(fault)
        assert during and all(o.code == "OK" for o in during), {o.code for o in during}
        assert journal.stat().st_size == size  # every refused record was cut back
        assert served.pids["user"] == pid  # the service lived through it
        assert feedback(stub) == before + 1  # none of the five refused updates was learned
    print(f"\nfault table: full journal: {len(during)} calls, 0 failed, 5 of 5 Feedback "
          "refused with the cause, none learned")


def _new_version(source: Path, name: str, tamper: bool = False) -> Path:
    """``source`` copied beside itself as version ``name``: the same weights under a new
    version id, as a retraining writes it; ``tamper``: one array file altered after its
    checksum was written."""
    target = source.parent / name
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))
    if tamper:
        victim = target / next(f for f in manifest["files"] if f.endswith(".npy"))
        victim.write_bytes(victim.read_bytes() + b"\0")
    return target


def _roll_out(folder: Path) -> None:
    subprocess.run([sys.executable, "-m", "commands.cli", "rollout"], check=True, timeout=30,
                   env={**os.environ, "HASHREC_MODELS": str(folder / "models")})


def test_a_rollout_under_load_fails_no_call_and_a_tampered_version_is_refused(
        stack: dict, data_dir: Path, tmp_path: Path) -> None:
    first = stack["trained"].directory
    first = Path(shutil.copytree(first, tmp_path / "versions" / first.name))
    with serving(stack, tmp_path, models=first) as served, \
            Load(f"127.0.0.1:{served.port}", _photo(data_dir)) as load:
        load.wait_until_whole(time.monotonic() - 1, 30)
        second = _new_version(first, "29990101-000000-second")
        start = time.monotonic()
        _roll_out(tmp_path)
        served.wait_for(r"recommender: now serving model 29990101-000000-second", 120)
        switched = time.monotonic()
        time.sleep(1.0)
        _new_version(second, "29990101-000001-tampered", tamper=True)
        refusal = time.monotonic()
        _roll_out(tmp_path)
        served.wait_for(r"rollout refused: model 29990101-000001-tampered: .*checksum", 120)
        # A crash after the refusal restarts the service on the version it served, not
        # into the refused one (which would crash-loop on its checksum).
        word = served.kill("word", signal.SIGKILL)
        served.restarted("word", word)
        load.wait_until_whole(time.monotonic(), 60)
        assert not any("checksum does not match" in line and "[word]" in line
                       for line in served.lines)
        time.sleep(1.0)
    during = load.since(start)
    failed = [o for o in during if o.code != "OK"]
    degraded = [o for o in load.since(start) if o.degraded_reasons and o.at < refusal]
    assert during and not failed, {o.code for o in failed}
    # Word and graph kept the old version for the recommender until it switched: no
    # answer lacked their scores (until word was killed on purpose, after the refusal).
    assert not degraded, {r for o in degraded for r in o.degraded_reasons}
    versions = [o.version for o in during]
    assert versions[0] == first.name and versions[-1] == second.name
    assert versions == sorted(versions)  # one switch, never back
    assert {o.version for o in load.since(refusal)} == {second.name}  # the refusal kept it
    print(f"\nfault table: rollout: {len(during)} calls, {len(failed)} failed, "
          f"{len(degraded) / len(during):.1%} degraded, switched {switched - start:.1f} s "
          "after the signal; a tampered version refused by the supervisor, and word killed "
          "after it restarted on the version it served")


def test_one_recommend_is_one_trace_across_the_service_processes(
        stack: dict, data_dir: Path, tmp_path: Path) -> None:
    """HASHREC_TRACING=file: each process writes its spans; the recommender's call to
    vision, word, graph and user continue its trace in their own processes."""
    spans_dir = tmp_path / "spans"
    with serving(stack, tmp_path, HASHREC_TRACING="file",
                 HASHREC_TRACING_FILE=str(spans_dir)) as served, \
            grpc.insecure_channel(f"127.0.0.1:{served.port}", options=CHANNEL_OPTIONS) as channel:
        reply = recommender_pb2_grpc.RecommenderServiceStub(channel).Recommend(
            recommender_pb2.RecommendRequest(image=_photo(data_dir) + b"\0trace",
                                             user_id="u00003", k=5), timeout=60)
        assert not reply.degraded, reply.degraded_reasons
        time.sleep(1.0)  # spans are written as they end
    spans = [json.loads(line) for path in spans_dir.glob("*.jsonl")
             for line in path.read_text().splitlines() if line]
    (root,) = [s for s in spans if s["name"] == "/hashrec.v1.RecommenderService/Recommend"
               and s["kind"] == "SpanKind.SERVER"]
    trace_id = root["context"]["trace_id"]
    servers = {s["resource"]["attributes"]["service.name"]: s["name"] for s in spans
               if s["context"]["trace_id"] == trace_id and s["kind"] == "SpanKind.SERVER"}
    assert servers == {"hashrec-recommender": "/hashrec.v1.RecommenderService/Recommend",
                       "hashrec-vision": "/hashrec.v1.VisionService/Embed",
                       "hashrec-word": "/hashrec.v1.WordEmbeddingService/Score",
                       "hashrec-graph": "/hashrec.v1.GraphEmbeddingService/Score",
                       "hashrec-user": "/hashrec.v1.UserProfileService/Score"}
    # every backend span hangs under one of the recommender's client spans
    clients = {s["context"]["span_id"] for s in spans if s["context"]["trace_id"] == trace_id
               and s["kind"] == "SpanKind.CLIENT"
               and s["resource"]["attributes"]["service.name"] == "hashrec-recommender"}
    assert all(s["parent_id"] in clients for s in spans
               if s["context"]["trace_id"] == trace_id and s["kind"] == "SpanKind.SERVER"
               and s is not root)
    print("\ntrace of one Recommend: " + json.dumps(sorted(
        (s["resource"]["attributes"]["service.name"], s["kind"], s["name"],
         round((_ns(s["end_time"]) - _ns(s["start_time"])) / 1e6, 1))
        for s in spans if s["context"]["trace_id"] == trace_id)))


def _ns(timestamp: str) -> float:
    """Nanoseconds since the epoch of an OpenTelemetry JSON timestamp."""
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1e9


def test_with_a_certificate_every_service_speaks_only_tls(stack: dict, data_dir: Path,
                                                         tmp_path: Path) -> None:
    tls = certificates(tmp_path / "tls")
    with serving(stack, tmp_path, **tls) as served:
        target = f"127.0.0.1:{served.port}"
        request = recommender_pb2.RecommendRequest(image=_photo(data_dir), user_id="u00003",
                                                   k=5)
        credentials = grpc.ssl_channel_credentials(  # mutual TLS: ours presents the cert
            root_certificates=Path(tls["HASHREC_TLS_CA"]).read_bytes(),
            certificate_chain=Path(tls["HASHREC_TLS_CERT"]).read_bytes(),
            private_key=Path(tls["HASHREC_TLS_KEY"]).read_bytes())
        with grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS) as channel:
            reply = recommender_pb2_grpc.RecommenderServiceStub(channel).Recommend(
                request, timeout=60)
        # the recommender reached vision, word, graph and user over TLS too
        assert reply.hashtags and not reply.degraded, reply.degraded_reasons
        for port in (served.port, served.port + 4):  # the recommender, the user service
            with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, \
                    pytest.raises(grpc.RpcError) as refused:
                recommender_pb2_grpc.RecommenderServiceStub(plain).Recommend(request,
                                                                             timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_redis_killed_and_restarted_under_load_fails_no_call(stack: dict, data_dir: Path,
                                                            tmp_path: Path) -> None:
    import redis as redis_client

    from tests.servers import RedisServer

    redis = RedisServer()
    redis.start()
    try:
        with serving(stack, tmp_path, HASHREC_REDIS_URL=redis.url) as running, \
                Load(f"127.0.0.1:{running.port}", _photo(data_dir)) as load:
            load.wait_until_whole(time.monotonic() - 1, 30)
            redis.kill()
            time.sleep(2.0)
            redis.start()  # back, empty
            time.sleep(7.0)  # past each cache's open circuit (5 s: shared/cache.py)
            keys = redis_client.Redis.from_url(redis.url).keys("hashrec:*")
        assert load.outcomes and all(o.code == "OK" and not o.degraded_reasons
                                     for o in load.outcomes)
        # Both vision and the recommender, each in its own process, filled it again.
        assert {key.split(b":")[1] for key in keys} >= {b"features", b"photo_scores"}
    finally:
        redis.kill()


def test_a_bad_start_is_one_clear_line_and_a_nonzero_exit(stack: dict,
                                                          tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "commands.cli", "serve", "--port", "1", "--http-port", "0",
         "--models", str(stack["trained"].directory), "--user-model", str(empty)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "neither a model directory nor a folder" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_sigterm_drains_every_child_and_exits_zero(stack: dict, data_dir: Path,
                                                   tmp_path: Path) -> None:
    port = free_ports_in_a_row(5)
    env = {**os.environ, "HASHREC_MODELS": str(tmp_path),
           "HASHREC_USER_STATE": str(tmp_path / "state"),
           **{f"HASHREC_{name.upper()}_METRICS_PORT": "0" for name in SERVICES}}
    process = subprocess.Popen(  # the user model given as its folder of versions
        [sys.executable, "-m", "commands.cli", "serve", "--port", str(port), "--http-port",
         "0", "--models", str(stack["trained"].directory), "--user-model",
         str(stack["user_dir"].parent)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    served = Served(process, port, tmp_path)
    try:
        served.wait_for(r"^serving hashrec\.v1\.RecommenderService")
        children = list(served.pids.values())
        with Load(f"127.0.0.1:{port}", _photo(data_dir)) as load:
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        # Calls in flight when SIGTERM came finished; later ones found the port closed.
        finished = [o for o in load.outcomes if o.code == "OK"]
        assert finished
        assert {o.code for o in load.outcomes} <= {"OK", "UNAVAILABLE"}
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or \
                "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if process.poll() is None:
            process.kill()
