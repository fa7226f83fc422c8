"""Operator mistakes end in one clear line, never in lost state: a second service on a
taken port or on a journal another one writes, a half-written model folder, a stale pid
file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.lookups import small_lookup
from tests.servers import free_port
from tests.test_user_privacy import UserService

REPO = Path(__file__).parents[1]


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[UserService]:
    lookup = small_lookup(with_effects=True, features=1280)
    lookup.add_photos(["trained-0"], np.random.default_rng(3).normal(size=(1, 1280)))
    lookup.save(tmp_path / "model")
    service = UserService(tmp_path / "model", tmp_path / "state")
    yield service
    service.close()


def _second_user_service(model: Path, port: int, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.user.server"], cwd=REPO, capture_output=True,
        text=True, timeout=120,
        env={**os.environ, "HASHREC_USER_MODEL_DIR": str(model), "HASHREC_USER_PORT":
             str(port), "HASHREC_USER_STATE": str(state), "HASHREC_USER_METRICS_PORT": "0"})


def test_a_second_user_service_on_a_taken_port_exits_2_with_one_line(
        running: UserService, tmp_path: Path) -> None:
    port = int(running.server.address.rsplit(":", 1)[1])
    second = _second_user_service(running.model_dir, port, tmp_path / "other-state")
    assert second.returncode == 2, second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("user: could not bind") and "in use" in last
    assert "Traceback" not in second.stderr


def test_a_second_user_service_on_a_held_journal_exits_2_naming_the_holder(
        running: UserService) -> None:
    second = _second_user_service(running.model_dir, free_port(), running.state)
    assert second.returncode == 2, second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert "held by another user service" in last and f"pid {os.getpid()}" in last
    assert "Traceback" not in second.stderr
    running.restart()  # the holder itself restarts on its own state: the lock was freed


@pytest.mark.parametrize(("setting", "named"), [
    ({"HASHREC_GATEWAY_HTTP": "h2"}, "HASHREC_GATEWAY_HTTP='h2'"),
    ({"HASHREC_AUTH": "oidc"}, "HASHREC_AUTH=oidc needs HASHREC_OIDC_ISSUER"),
    ({"HASHREC_GATEWAY_PORT": "eighty"}, "'eighty'"),
])
def test_a_misconfigured_gateway_exits_2_with_one_line_naming_the_setting(
        setting: dict[str, str], named: str, tmp_path: Path) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "services.gateway.server"], capture_output=True, text=True,
        timeout=60, cwd=REPO, env={**os.environ, "HASHREC_MODELS": str(tmp_path), **setting})
    assert started.returncode == 2, started.stderr
    assert "Traceback" not in started.stderr
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: ") and named in last, last


@pytest.mark.parametrize(("service", "setting", "named"), [
    ("word", {}, "HASHREC_MODEL_DIR is not set"),
    ("user", {}, "HASHREC_USER_MODEL_DIR is not set"),
    ("graph", {"HASHREC_MODEL_DIR": ".", "HASHREC_GRAPH_PORT": "x"},
     "HASHREC_GRAPH_PORT must be a number, got 'x'"),
    ("vision", {"HASHREC_THREADS": "many"}, "HASHREC_THREADS must be a whole number"),
    # the socket layer takes a port modulo 65536: 99999 served on 34463
    ("word", {"HASHREC_MODEL_DIR": ".", "HASHREC_WORD_PORT": "99999"},
     "HASHREC_WORD_PORT must be a port from 0 to 65535, got 99999"),
    ("word", {"HASHREC_MODEL_DIR": "/nonexistent/models"}, "/nonexistent/models"),
])
def test_a_misconfigured_service_exits_2_with_one_line_naming_the_setting(
        service: str, setting: dict[str, str], named: str) -> None:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("HASHREC_MODEL_DIR", "HASHREC_USER_MODEL_DIR")}
    started = subprocess.run(
        [sys.executable, "-m", f"services.{service}.server"], capture_output=True, text=True,
        timeout=120, cwd=REPO, env={**environment, **setting})
    assert started.returncode == 2, started.stderr
    assert "Traceback" not in started.stderr
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{service}: ") and named in last, last


def test_a_half_written_manifest_is_skipped_with_a_reason_not_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from shared.artifacts import ArtifactReader, ArtifactWriter, newest_artifact

    good = ArtifactWriter(tmp_path / "20260101-000000-good")
    good.json("vocabulary", ["a"])
    good.close({"kind": "image-models"})
    broken = tmp_path / "20270101-000000-broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"kind": "image-mod')  # cut off mid-write
    assert newest_artifact(tmp_path, "image-models") == tmp_path / "20260101-000000-good"
    assert "20270101-000000-broken" in caplog.text and "not valid JSON" in caplog.text
    with pytest.raises(ValueError, match="not valid JSON"):
        ArtifactReader(broken)


def test_rollout_refuses_a_pid_file_naming_another_program(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "serve.pid").write_text(f"{sleeper.pid}\n")
        rollout = subprocess.run(
            [sys.executable, "-m", "commands.cli", "rollout"], cwd=REPO, capture_output=True,
            text=True, timeout=60, env={**os.environ, "HASHREC_MODELS": str(tmp_path)})
        assert rollout.returncode == 2
        assert f"pid {sleeper.pid}" in rollout.stderr and "not a `hashrec serve`" in \
            rollout.stderr
        assert sleeper.poll() is None  # the unrelated process got no signal
    finally:
        sleeper.kill()
        sleeper.wait()


def test_train_writes_its_version_under_a_temporary_name_then_renames_it(
        tmp_path: Path) -> None:
    from commands.train import publish_version

    with publish_version(tmp_path, "20260101-000000-abc") as folder:
        assert folder.name.startswith(".tmp-") and folder.parent == tmp_path
        (folder / "manifest.json").write_text(json.dumps({"kind": "x", "files": {}}))
        assert not (tmp_path / "20260101-000000-abc").exists()
    assert (tmp_path / "20260101-000000-abc" / "manifest.json").is_file()
    with pytest.raises(RuntimeError), publish_version(tmp_path, "20260102-000000-def"):
        raise RuntimeError("training failed half-way")
    assert not any(tmp_path.glob("*def*")) and not any(tmp_path.glob(".tmp-*"))


def test_restart_backoff_doubles_up_to_its_ceiling() -> None:
    from commands.supervisor import BACKOFF_MAX, BACKOFF_START, next_backoff

    delays = [BACKOFF_START]
    for _ in range(12):
        delays.append(next_backoff(delays[-1]))
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == BACKOFF_MAX == delays[-1] == 30.0


def test_a_new_user_model_is_swapped_in_live_with_every_update_once(
        running: UserService, tmp_path: Path) -> None:
    """Feedback back to back while `hashrec rollout`'s SIGHUP swaps in a new version of the
    user model: no call fails, and the new version holds every acknowledged update once."""
    import shutil
    import threading

    import grpc
    from hashrec.v1 import photo_pb2, user_pb2

    from tests.test_user_privacy import FEATURES, _post

    acknowledged: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def feed() -> None:
        number = 0
        while not stop.is_set():
            try:
                acknowledged.append(_post(running, "swapper", number % 5,
                                          request_id=f"s-{number}").posts)
            except grpc.RpcError as error:
                failures.append(error.code().name)
            number += 1

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        while len(acknowledged) < 5:
            time.sleep(0.05)
        shutil.copytree(tmp_path / "model", tmp_path / "model-2")  # a newer version
        running.loop.call(running.server.reload())
        before = len(acknowledged)
        while len(acknowledged) < before + 5:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures
    assert acknowledged == list(range(1, len(acknowledged) + 1))  # each counted once
    score = running.stub.Score(user_pb2.UserScoreRequest(
        photo=photo_pb2.PhotoDescription(features=FEATURES[0].tolist()), user_id="swapper"))
    assert score.model_version == "model-2" and score.known_user
    lookup = running.server.servicer.lookup
    assert lookup.post_counts[lookup.user_index["swapper"]] == len(acknowledged)
    running.restart()  # started afresh on the folder: the newest version, same profile


def test_a_folder_of_versions_starts_on_the_newest_that_verifies(tmp_path: Path) -> None:
    import shutil

    from shared.artifacts import ArtifactWriter, newest_artifact, resolve_artifact

    for name in ("20260101-000000-good", "20260202-000000-tampered"):
        writer = ArtifactWriter(tmp_path / name)
        writer.json("vocabulary", ["a", "b"])
        writer.close({"kind": "image-models"})
    (tmp_path / "20260202-000000-tampered" / "vocabulary.json").write_text('["a", "x"]')
    assert newest_artifact(tmp_path, "image-models").name == "20260202-000000-tampered"
    assert resolve_artifact(tmp_path, "image-models").name == "20260101-000000-good"
    # none verifies: the error says why, not that the folder holds no model
    shutil.rmtree(tmp_path / "20260101-000000-good")
    with pytest.raises(ValueError, match=r"no image-models version verifies \(the newest, "
                       r"20260202-000000-tampered: .*vocabulary.json"):
        resolve_artifact(tmp_path, "image-models")
    with pytest.raises(ValueError, match="is a 'image-models' model, not 'user-tensor'"):
        resolve_artifact(tmp_path / "20260202-000000-tampered", "user-tensor")


def test_a_service_refusing_its_model_ends_in_one_line_without_a_traceback(
        stack: dict, tmp_path: Path) -> None:
    """The server listens (health NOT_SERVING) before the model loads; a model that fails
    verification stops it on the loop, not in gRPC's finaliser after the loop closed."""
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(stack["trained"].directory, tampered)
    victim = next(path for path in sorted(tampered.iterdir()) if path.suffix == ".npy")
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    result = subprocess.run(
        [sys.executable, "-m", "services.word.server"], cwd=REPO, capture_output=True,
        text=True, timeout=120, env={**os.environ, "HASHREC_MODEL_DIR": str(tampered),
                                     "HASHREC_WORD_PORT": "0",
                                     "HASHREC_WORD_METRICS_PORT": "0"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, \
        result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"word: {victim}: checksum does not match the manifest"
