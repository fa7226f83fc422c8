"""The user service sharded by user id: jump hashing, a shard's state bound to it, calls
routed by user over real shard processes, a shard down degrading only its own users, and
resharding that keeps every acknowledged update."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hashrec.v1 import recommender_pb2, recommender_pb2_grpc, user_pb2, user_pb2_grpc

from commands.cli.shards import user_shard_env
from services.user import shards as user_shards
from services.user.journal import UpdateJournal
from services.user.lookup import UserHashtagLookup
from services.user.shards import ReshardError, claim, reshard, shard_folder
from shared.grpc_server import CHANNEL_OPTIONS, StartupError
from shared.sharding import Shard, jump_hash, shard_of, user_key
from tests.lookups import small_lookup
from tests.processes import sample_photo, serving
from tests.servers import free_port

REPO = Path(__file__).parents[1]
FEATURES = np.random.default_rng(3).normal(size=8).astype(np.float32)


def test_adding_a_shard_moves_only_its_share_of_the_users_and_only_to_it() -> None:
    users = [f"local:user{i}" for i in range(20_000)]
    before = np.array([shard_of(u, 3) for u in users])
    after = np.array([shard_of(u, 4) for u in users])
    moved = before != after
    assert set(after[moved]) == {3}  # nobody moves between the old shards
    assert 0.22 < moved.mean() < 0.28  # 1/4 of them
    assert np.bincount(after).min() > 0.9 * len(users) / 4  # balanced
    assert jump_hash(user_key("ann"), 1) == 0
    with pytest.raises(ValueError, match="at least 1"):
        jump_hash(1, 0)


def _users_of(shard: int, count: int, n: int) -> list[str]:
    return [u for u in (f"local:u{i}" for i in range(1000)) if shard_of(u, count) == shard][:n]


def _journal_posts(model_dir: Path, folder: Path, posts: dict[str, int], shard: Shard) -> None:
    """What a shard's service does with each acknowledged post: journal it (fsync)."""
    claim(folder, shard)
    journal = UpdateJournal(folder / model_dir.name)
    for user, tag in posts.items():
        journal.append(user, [f"tag{tag}"], FEATURES, photo_id=f"photo-{user}")


def _recovered(model_dir: Path, folder: Path) -> UserHashtagLookup:
    lookup = UserHashtagLookup.load(model_dir)
    UpdateJournal(folder / model_dir.name).recover(lookup)
    return lookup


@contextlib.contextmanager
def _killed_when(monkeypatch: pytest.MonkeyPatch, name: str,
                 when: Callable[[Path], bool]) -> Iterator[None]:
    """services/user/shards.py's ``name`` dies (as a killed process stops) on the first
    path ``when`` picks; the block must stop there."""
    real = getattr(user_shards, name)

    def dying(path: Path, *rest: object) -> object:
        if when(path):
            raise OSError("killed")
        return real(path, *rest)

    monkeypatch.setattr(user_shards, name, dying)
    with pytest.raises(OSError, match="killed"):
        yield
    monkeypatch.setattr(user_shards, name, real)


def _posts_on_shards(model_dir: Path, root: Path, count: int,
                     posts: dict[str, int]) -> dict[str, float]:
    """Each user's count of their post's hashtag, on whichever of ``count`` shards
    (each claimed as a service would) knows them."""
    found = {}
    for index in range(count):
        claim(root / f"shard-{index}", Shard(index, count))
        lookup = _recovered(model_dir, root / f"shard-{index}")
        found.update({u: lookup.hashtag_counts[lookup.user_index[u], t]
                      for u, t in posts.items() if u in lookup.user_index})
    return found


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    small_lookup(with_effects=True).save(tmp_path / "model")
    return tmp_path / "model"


def test_resharding_moves_each_user_with_every_acknowledged_update(model_dir: Path,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "state"
    posts = {}
    for index in range(2):
        mine = {u: 5 + i % 30 for i, u in enumerate(_users_of(index, 2, 40))}
        _journal_posts(model_dir, shard_folder(root, Shard(index, 2)), mine, Shard(index, 2))
        posts.update(mine)
    # shard 0's snapshot holds its first posts; more come after it
    lookup = UserHashtagLookup.load(model_dir)
    journal = UpdateJournal(root / "shard-0" / model_dir.name)
    journal.recover(lookup)
    journal.snapshot(lookup)
    later = {u: 3 for u in _users_of(0, 2, 5)}
    for user in later:
        journal.append(user, ["tag3"], FEATURES)
    plan = reshard(root, 3)
    assert plan["from"] == 2 and plan["to"] == 3
    assert sum(plan["records"]) == len(posts) + len(later)
    # the new shards start from their share of the snapshot, not from a full replay: each
    # holds the 3 trained users and its share of shard 0's 40 (shard 1 had no snapshot)
    assert sum(plan["snapshot_users"]) == 3 * 3 + 40
    for index in range(3):
        folder = root / f"shard-{index}"
        assert user_shards.read_marker(folder) == Shard(index, 3)
        lookup = _recovered(model_dir, folder)
        for user, tag in posts.items():
            owned = shard_of(user, 3) == index
            assert (user in lookup.user_index) == owned, user
            if owned:  # the post and its upload, once
                row = lookup.user_index[user]
                assert lookup.hashtag_counts[row, tag] == 1 + (tag == 3) * (user in later)
                assert lookup.hashtag_counts[row, 3] == (tag == 3) + (user in later)
                assert lookup.owners.photos_of(user) == [f"photo-{user}"]
    assert (root / "shard-1" / plan["backup"] / "updates.jsonl").exists()  # the old kept
    # and back to one: the whole state in the root again
    plan = reshard(root, 1)
    lookup = _recovered(model_dir, root)
    assert all(lookup.hashtag_counts[lookup.user_index[u], t] >= 1 for u, t in posts.items())
    assert sum(lookup.hashtag_counts[lookup.user_index[u], 3] for u in later) >= len(later)
    assert lookup.post_counts.sum() == small_lookup(True).post_counts.sum() + len(posts) \
        + len(later)
    assert user_shards.read_marker(root) == Shard(0, 1)


def test_a_trained_users_updated_row_moves_to_their_new_shard_alone(model_dir: Path,
                                                                    tmp_path: Path) -> None:
    """ann was in the trained model; her post is in a snapshot. After resharding only her
    new shard holds the post (a copy elsewhere would outlive her Forget), and going back
    to one shard counts it once."""
    root = tmp_path / "state"
    lookup, trained = UserHashtagLookup.load(model_dir), small_lookup(True)
    claim(root, Shard())
    journal = UpdateJournal(root / model_dir.name)
    journal.recover(lookup)
    journal.append("ann", ["tag7"], FEATURES)
    lookup.update("ann", FEATURES, [7])
    journal.snapshot(lookup)
    reshard(root, 2)
    mine = shard_of("ann", 2)
    for index in range(2):
        shard = _recovered(model_dir, root / f"shard-{index}")
        extra = 1 if index == mine else 0
        assert shard.hashtag_counts[0, 7] == trained.hashtag_counts[0, 7] + extra
        assert shard.post_counts[0] == trained.post_counts[0] + extra
        np.testing.assert_array_equal(shard.hashtag_counts[1:], trained.hashtag_counts[1:])
    reshard(root, 1)
    back = _recovered(model_dir, root)
    assert back.hashtag_counts[0, 7] == trained.hashtag_counts[0, 7] + 1
    assert back.post_counts.sum() == trained.post_counts.sum() + 1


def test_a_shrink_stopped_in_its_swap_is_finished_by_running_it_again(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "state"
    posts = {f"local:u{i}": 5 + i % 30 for i in range(30)}
    _journal_posts(model_dir, root, posts, Shard())
    reshard(root, 3)
    # 3 -> 2: shard-2, a folder of the old shards alone, is where the swap stops
    with _killed_when(monkeypatch, "_move", lambda source: "shard-2" in str(source)):
        reshard(root, 2)
    with pytest.raises(StartupError, match="interrupted"):
        claim(root / "shard-0", Shard(0, 2))
    assert reshard(root, 2)["resumed"]
    assert _posts_on_shards(model_dir, root, 2, posts) == dict.fromkeys(posts, 1)


def test_an_interrupted_resharding_blocks_the_shards_and_is_finished_by_running_it_again(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "state"
    posts = {f"local:u{i}": 5 + i for i in range(20)}
    _journal_posts(model_dir, root, posts, Shard())
    # the old state is in its backup, the first staged file is moving in: half swapped
    with _killed_when(monkeypatch, "_move",
                      lambda source: user_shards.STAGING in source.parts):
        reshard(root, 2)
    with pytest.raises(StartupError, match="interrupted"):
        claim(root / "shard-0", Shard(0, 2))
    assert reshard(root, 2)["resumed"]
    assert _posts_on_shards(model_dir, root, 2, posts) == dict.fromkeys(posts, 1)


def test_a_state_folder_serves_only_the_shard_it_belongs_to(model_dir: Path,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "state"
    # written before services were sharded: no marker; its users are not all shard 0's
    UpdateJournal(root / model_dir.name).append("local:ann", ["tag3"], FEATURES)
    with pytest.raises(StartupError, match="unsharded"):
        claim(root, Shard(0, 2))
    claim(root, Shard())
    with pytest.raises(StartupError,
                       match=r"state of shard 0 of 1.*reshard-users --state .* --to 2"):
        claim(root, Shard(0, 2))
    claim(root / "fresh", Shard(1, 3))
    with pytest.raises(StartupError, match=r"shard 1 of 3.*started as shard 0 of 3"):
        claim(root / "fresh", Shard(0, 3))
    (root / "shard-0").mkdir()  # a folder without a marker is not a shard's
    (root / "updates.jsonl").unlink()
    (root / "shard.json").unlink()
    with pytest.raises(ReshardError, match=r"no shard\.json"):
        reshard(root, 2)


def test_operator_mistakes_with_shards_end_in_one_line_and_lose_nothing(
        model_dir: Path, tmp_path: Path) -> None:
    """An outside try's findings: each refused before any state is touched."""
    root = tmp_path / "state"
    with pytest.raises(ReshardError, match="no user service state"):  # a typo'd --state
        reshard(tmp_path / "nosuch", 3)
    root.mkdir()
    with pytest.raises(ReshardError, match="holds no user service state"):
        reshard(root, 3)
    with pytest.raises(ReshardError, match="--to must be 1 to 1024, not 100000"):
        reshard(root, 100_000)  # a typo would make a folder and a process a shard
    with pytest.raises(ValueError, match="count must be 1 to 1024"):
        Shard(0, 5000)
    posts = {f"local:u{i}": 5 + i for i in range(12)}
    _journal_posts(model_dir, root, posts, Shard())
    with (root / "updates.jsonl").open("ab") as journal:  # a write a kill cut short
        journal.write(b'0badf00d {"seq": 13, "user": "local:u1')
    reshard(root, 3)
    # an unsharded service over the sharded state would start with nobody
    with pytest.raises(StartupError, match=r"state of 3 shards.*--user-shards 3"):
        claim(root, Shard())
    # a count that does not match is refused before it marks anything
    with pytest.raises(StartupError,
                       match=r"holds the state of 3 shards \(shard-0 is shard 0 of 3\)"):
        claim(root / "shard-3", Shard(3, 4))
    assert not (root / "shard-3").exists() or user_shards.read_marker(root / "shard-3") is None
    # shrinking leaves an emptied shard-2 behind; growing again passes over it
    reshard(root, 2)
    reshard(root, 3)
    (root / "shard-1" / "shard.json").write_text('{"index": 1}')
    with pytest.raises(ReshardError, match=r"shard-1/shard\.json is damaged"):
        reshard(root, 2)
    with pytest.raises(StartupError, match=r"shard\.json is damaged"):
        claim(root / "shard-1", Shard(1, 3))
    user_shards.write_marker(root / "shard-1", Shard(1, 3))
    assert _posts_on_shards(model_dir, root, 3, posts) == dict.fromkeys(posts, 1)


def test_a_resharding_stopped_before_its_staging_was_whole_starts_over(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "state"
    posts = {f"local:u{i}": 5 + i for i in range(12)}
    _journal_posts(model_dir, root, posts, Shard())
    reshard(root, 2)
    with _killed_when(monkeypatch, "_write_durably", lambda path: path.name ==
                      "shard.json.tmp" and "shard-1" in str(path)):  # the second marker
        reshard(root, 3)
    claim(root / "shard-0", Shard(0, 2))  # nothing was READY: the old shards still serve
    with pytest.raises(ReshardError, match="finish it first"):
        _interrupted_to(root)
    plan = reshard(root, 3)
    assert not plan.get("resumed") and sum(plan["records"]) == len(posts)


def _interrupted_to(root: Path) -> None:
    """A resharding left READY to 2 shards, then asked to go to 5 instead."""
    plan = {"from": 2, "to": 2, "folders": [], "backup": ".before-reshard-x", "records": []}
    (root / ".reshard").mkdir()
    (root / ".reshard" / "READY").write_text(json.dumps(plan))
    try:
        reshard(root, 5)
    finally:
        shutil.rmtree(root / ".reshard")


# --- over real processes --------------------------------------------------------------
def _start_shard(user_dir: Path, state_root: Path, index: int, count: int,
                 port: int) -> subprocess.Popen:
    env = {**os.environ, "HASHREC_USER_MODEL_DIR": str(user_dir), "PYTHONPATH": str(REPO),
           **user_shard_env(index, count, "127.0.0.1", port, 0, state_root)}
    return subprocess.Popen([sys.executable, "-m", "services.user.server"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _until_serving(address: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"{address} did not serve in {timeout} s")


class Shards:
    """N user-service shard processes on one state root, and a recommender routing to
    them (in the stack's event loop, over real sockets)."""

    def __init__(self, stack: dict, state_root: Path, count: int) -> None:
        from services.recommender.server import serve as serve_recommender

        self.stack, self.count = stack, count
        self.ports = [free_port() for _ in range(count)]
        self.processes = [_start_shard(stack["user_dir"], state_root, i, count, port)
                          for i, port in enumerate(self.ports)]
        for process, port in zip(self.processes, self.ports, strict=True):
            _until_serving(f"127.0.0.1:{port}", process)
        self.recommender = stack["loop"].call(serve_recommender(
            "127.0.0.1", 0, stack["trained"].directory, stack["vision"].address,
            stack["word"].address, stack["graph"].address,
            ",".join(f"127.0.0.1:{p}" for p in self.ports), backend_deadline=30))
        self.channel = grpc.insecure_channel(self.recommender.address, options=CHANNEL_OPTIONS)
        self.stub = recommender_pb2_grpc.RecommenderServiceStub(self.channel)

    def shard_stub(self, index: int) -> tuple[grpc.Channel, user_pb2_grpc.UserProfileServiceStub]:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.ports[index]}")
        return channel, user_pb2_grpc.UserProfileServiceStub(channel)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.channel is None:
            return
        self.channel.close()
        self.channel = None
        self.stack["loop"].call(self.recommender.stop())
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)
            process.wait(timeout=60)


@pytest.fixture()
def two_shards(stack: dict, tmp_path: Path) -> Iterator[Shards]:
    shards = Shards(stack, tmp_path / "state", 2)
    yield shards
    shards.stop()


def _hashtags(stack: dict) -> list[str]:
    vocabulary = json.loads((stack["user_dir"] / "manifest.json").read_text())["vocabulary"]
    return vocabulary[:3]


def test_calls_are_routed_by_user_and_a_shard_down_degrades_only_its_users_then_resharding_keeps_them(  # noqa: E501
        stack: dict, two_shards: Shards, data_dir: Path, tmp_path: Path) -> None:
    image, hashtags = sample_photo(data_dir), _hashtags(stack)
    users = {index: _users_of(index, 2, 3) for index in range(2)}
    for mine in users.values():
        for user in mine:  # acknowledged: each answered
            reply = two_shards.stub.Feedback(recommender_pb2.FeedbackRequest(
                image=image, user_id=user, hashtags=hashtags), timeout=60)
            assert reply.accepted
    for index, mine in users.items():  # each user's post is on their shard alone
        channel, shard = two_shards.shard_stub(index)
        with channel:
            for user in mine:
                assert len(shard.Photos(user_pb2.UserPhotosRequest(user_id=user),
                                        timeout=30).photo_ids) == 1
            with pytest.raises(grpc.RpcError) as refused:
                shard.Photos(user_pb2.UserPhotosRequest(user_id=users[1 - index][0]),
                             timeout=30)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"not shard {index} of 2's" in refused.value.details()
    two_shards.processes[1].send_signal(signal.SIGKILL)  # shard 1 down, no drain
    two_shards.processes[1].wait(timeout=30)
    kept, lost = recommend_through(two_shards, image, users[0][0]), \
        recommend_through(two_shards, image, users[1][0])
    assert not kept.degraded, kept.degraded_reasons
    assert lost.degraded and any(r.startswith("user shard 1:") for r in lost.degraded_reasons)
    assert lost.hashtags  # the photo's answer still comes
    two_shards.stop()
    # 2 -> 3 shards with the services stopped: every acknowledged post is where it belongs
    done = subprocess.run([sys.executable, "-m", "commands.cli", "reshard-users", "--to", "3",
                           "--state", str(tmp_path / "state")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sum(json.loads(done.stdout)["records"]) == 6
    three = Shards(stack, tmp_path / "state", 3)
    try:
        for user in users[0] + users[1]:
            channel, shard = three.shard_stub(shard_of(user, 3))
            with channel:
                assert len(shard.Photos(user_pb2.UserPhotosRequest(user_id=user),
                                        timeout=30).photo_ids) == 1, user
            assert not recommend_through(three, image, user).degraded
    finally:
        three.stop()


def recommend_through(shards: Shards, image: bytes, user: str) -> recommender_pb2.RecommendResponse:
    return shards.stub.Recommend(recommender_pb2.RecommendRequest(
        image=image, user_id=user, k=10), timeout=60)


def test_hashrec_serve_runs_each_user_shard_as_a_supervised_process_that_keeps_its_users(
        stack: dict, data_dir: Path, tmp_path: Path) -> None:
    """`hashrec serve --user-shards 2`: shard i on PORT+4+i with its own state folder; a
    shard killed is restarted by the supervisor with every acknowledged update."""
    image, hashtags = sample_photo(data_dir), _hashtags(stack)
    user = _users_of(1, 2, 1)[0]
    with serving(stack, tmp_path, user_shards=2) as served:
        assert {"user-0", "user-1"} <= set(served.pids)
        with grpc.insecure_channel(f"127.0.0.1:{served.port}",
                                   options=CHANNEL_OPTIONS) as channel:
            stub = recommender_pb2_grpc.RecommenderServiceStub(channel)
            assert stub.Feedback(recommender_pb2.FeedbackRequest(
                image=image, user_id=user, hashtags=hashtags), timeout=60).accepted
            old = served.kill("user-1", signal.SIGKILL)
            served.restarted("user-1", old)
            deadline = time.monotonic() + 60
            while True:  # until the restarted shard serves again
                try:
                    photos = stub.Photos(user_pb2.UserPhotosRequest(user_id=user), timeout=10)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "shard 1 did not come back"
                    time.sleep(0.5)
            assert len(photos.photo_ids) == 1
        with grpc.insecure_channel(f"127.0.0.1:{served.port + 5}") as channel:  # shard 1
            shard = user_pb2_grpc.UserProfileServiceStub(channel)
            assert len(shard.Photos(user_pb2.UserPhotosRequest(user_id=user),
                                    timeout=30).photo_ids) == 1
    assert user_shards.read_marker(tmp_path / "state" / "shard-1") == Shard(1, 2)
    assert (tmp_path / "state" / "shard-1" / "updates.jsonl").stat().st_size > 0
    assert not (tmp_path / "state" / "shard-0" / "updates.jsonl").exists() or \
        user.encode() not in (tmp_path / "state" / "shard-0" / "updates.jsonl").read_bytes()
