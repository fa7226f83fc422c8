"""UserProfileService over real gRPC: an upload is its poster's alone, a person takes back
an upload or everything, and a retried update is learned from once, across restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hashrec.v1 import photo_pb2, user_pb2, user_pb2_grpc

from services.user.journal import decode_record
from services.user.server import serve
from tests.lookups import small_lookup
from tests.servers import LoopThread

FEATURES = np.random.default_rng(11).normal(size=(6, 1280)).astype(np.float32)


class UserService:
    """A user service on the small model, restartable on the same state folder."""

    def __init__(self, model_dir: Path, state: Path) -> None:
        self.model_dir, self.state = model_dir, state
        self.loop = LoopThread()
        self.server = self.channel = None
        self.start()

    def start(self) -> None:
        self.server = self.loop.call(serve("127.0.0.1", 0, self.model_dir, self.state))
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = user_pb2_grpc.UserProfileServiceStub(self.channel)

    def restart(self) -> None:
        self.channel.close()
        self.loop.call(self.server.stop())
        self.start()

    def close(self) -> None:
        self.channel.close()
        self.loop.call(self.server.stop())
        self.loop.close()


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[UserService]:
    lookup = small_lookup(with_effects=True, features=1280)
    lookup.add_photos([f"trained-{i}" for i in range(20)],  # the training photos
                      np.random.default_rng(3).normal(size=(20, 1280)))
    lookup.save(tmp_path / "model")
    service = UserService(tmp_path / "model", tmp_path / "state")
    yield service
    service.close()


def _post(service: UserService, user: str, photo: int, request_id: str = "",
          hashtags: tuple[str, ...] = ("tag3",)) -> user_pb2.UserUpdateResponse:
    return service.stub.Update(user_pb2.UserUpdateRequest(
        user_id=user, photo=photo_pb2.PhotoDescription(features=FEATURES[photo].tolist()),
        hashtags=list(hashtags), photo_id=f"upload-{photo}", request_id=request_id))


def _retrieved(service: UserService, user: str) -> set[str]:
    reply = service.stub.Retrieve(user_pb2.RetrieveRequest(hashtag="tag3", user_id=user,
                                                           k=100))
    return {p.photo_id for p in reply.photos}


def test_an_upload_is_retrieved_for_its_poster_only(service: UserService) -> None:
    _post(service, "alice", 0)
    _post(service, "bob", 1)
    assert "upload-0" in _retrieved(service, "alice")
    assert "upload-1" not in _retrieved(service, "alice")
    assert "upload-0" not in _retrieved(service, "bob") | _retrieved(service, "")
    trained = _retrieved(service, "")
    assert trained and not any(p.startswith("upload-") for p in trained)
    photos = service.stub.Photos(user_pb2.UserPhotosRequest(user_id="alice"))
    assert list(photos.photo_ids) == ["upload-0"]


def test_a_retried_update_is_answered_as_the_first_and_learned_once_across_a_restart(
        service: UserService) -> None:
    first = _post(service, "alice", 0, request_id="r-1")
    assert first.posts == 1
    service.restart()
    again = _post(service, "alice", 0, request_id="r-1", hashtags=("tag5",))
    assert again == first
    assert _post(service, "alice", 2, request_id="r-2").posts == 2
    assert _post(service, "dan", 1, request_id="r-1").posts == 1  # ids are per user
    with pytest.raises(grpc.RpcError) as refused:
        _post(service, "alice", 3, request_id="x" * 200)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in refused.value.details()


def test_an_upload_taken_back_is_gone_from_retrieval_and_from_disk(
        service: UserService) -> None:
    _post(service, "alice", 0)
    _post(service, "alice", 1)
    reply = service.stub.Forget(user_pb2.ForgetRequest(user_id="alice",
                                                       photo_id="upload-0"))
    assert reply.photos_removed == 1 and not reply.profile_removed
    assert "upload-0" not in _retrieved(service, "alice")
    assert "upload-1" in _retrieved(service, "alice")
    # Gone from the disk at once: the journal is rewritten without that post (its
    # features), and the snapshot holds the photo no more.
    records = [decode_record(line, 0) for line in
               (service.state / "updates.jsonl").read_bytes().splitlines(keepends=True)]
    assert {r.photo_id for r in records if r.kind == "post"} == {"upload-1"}
    assert all(r.features.size == 0 for r in records if r.kind == "forget")
    snapshot = next((service.state / "model" / "snapshots").iterdir())
    assert b"upload-0" not in b"".join(p.read_bytes() for p in snapshot.iterdir())
    service.restart()
    assert "upload-0" not in service.stub.Photos(
        user_pb2.UserPhotosRequest(user_id="alice")).photo_ids
    assert "upload-1" in _retrieved(service, "alice")
    with pytest.raises(grpc.RpcError) as missing:
        service.stub.Forget(user_pb2.ForgetRequest(user_id="bob", photo_id="upload-1"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "upload-1" in _retrieved(service, "alice")  # bob cannot take alice's photo


def test_forgetting_a_user_removes_their_profile_uploads_and_requests(
        service: UserService) -> None:
    stranger = service.stub.Score(user_pb2.UserScoreRequest(
        photo=photo_pb2.PhotoDescription(features=FEATURES[4].tolist()), k=5))
    for photo in range(3):
        _post(service, "carol", photo, request_id=f"c-{photo}",
              hashtags=("tag7", "tag9"))
    reply = service.stub.Forget(user_pb2.ForgetRequest(user_id="carol"))
    assert reply.photos_removed == 3 and reply.profile_removed
    service.restart()
    score = service.stub.Score(user_pb2.UserScoreRequest(
        photo=photo_pb2.PhotoDescription(features=FEATURES[4].tolist()), user_id="carol",
        k=5))
    assert not score.known_user and list(score.hashtags) == list(stranger.hashtags)
    assert not service.stub.Photos(user_pb2.UserPhotosRequest(user_id="carol")).photo_ids
    assert _post(service, "carol", 0, request_id="c-0").posts == 1  # a fresh start
    snapshot = next((service.state / "model" / "snapshots").iterdir())
    assert b"upload-1" not in b"".join(p.read_bytes() for p in snapshot.iterdir())
    records = [decode_record(line, 0) for line in
               (service.state / "updates.jsonl").read_bytes().splitlines(keepends=True)]
    assert [r.request_id for r in records if r.user == "carol" and r.kind == "post"] == \
        ["c-0"]  # the three posts before the forget are gone; the fresh one is there
