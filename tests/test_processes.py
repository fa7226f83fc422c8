"""`hashrec serve` as it runs for real traffic: one process per service, supervised, and
faults survived under a steady load of Recommend calls (some with users). Every test is
bounded in time and talks over loopback only. (Rollouts, tracing, TLS, Redis and the
whole tree's start and stop: tests/test_serve_lifecycle.py.)"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
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
from tests.processes import (
    DEADLINE_S,
    RECOVERY_S,
    SERVICES,
    Load,
    Served,
    children_of,
    sample_photo,
    serving,
)


@pytest.fixture(scope="module")
def served(stack: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(stack, tmp_path_factory.mktemp("served")) as running:
        yield running


def _fault_under_load(served: Served, data_dir: Path, service: str,
                      sig: signal.Signals) -> tuple[Load, float, float]:
    """Sends ``sig`` to ``service`` while Recommend calls run, waits for the supervisor's
    restart and for whole answers again: (the load, when the fault came, seconds until
    answers were whole again)."""
    with Load(f"127.0.0.1:{served.port}", sample_photo(data_dir)) as load:
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
    children = children_of(served.process.pid)
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
            vision_pb2.EmbedRequest(image=sample_photo(data_dir), top_labels=5), timeout=30))
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
                        image=sample_photo(data_dir), user_id=user, hashtags=[known]),
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
                        image=sample_photo(data_dir), user_id=user, hashtags=[known]),
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
    user, image = "full-journal", sample_photo(data_dir)
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
