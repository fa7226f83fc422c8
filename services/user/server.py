"""UserProfileService over gRPC: transport only; the math is in services/user/lookup.py.

Updates run on one writer thread, in arrival order: each is journaled (fsync) before it
is applied (services/user/journal.py), and every HASHREC_USER_SNAPSHOT_EVERY updates (and
at shutdown) the profiles are snapshotted and the journal emptied, so a start replays at
most that many. Score runs batched across concurrent calls on a
numeric thread of its own (shared/batching.py), Retrieve on reader threads: a burst of
Feedback never queues a Score behind it (the lookup publishes each update under a lock).

Config from the environment: HASHREC_USER_HOST (127.0.0.1), HASHREC_USER_PORT (50054),
HASHREC_USER_METRICS_PORT (9104),
HASHREC_USER_MODEL_DIR (from services/user/train.py, or a folder of them: the newest),
HASHREC_USER_STATE (where the update journal lives; default beside the model),
HASHREC_USER_SNAPSHOT_EVERY (1000), HASHREC_USER_SHARD_INDEX (0) and HASHREC_USER_SHARDS (1):
this process is that shard of the users (services/user/shards.py); a call naming a user it
does not own is refused (FAILED_PRECONDITION), and its state folder is bound to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
from hashrec.v1 import user_pb2, user_pb2_grpc

from services.recommender.user_side import mix_user_answers
from services.user.communities import community_problem
from services.user.journal import JournalError, UpdateJournal, hold_state
from services.user.lookup import KIND, UserHashtagLookup
from services.user.shards import claim
from shared.admission import abort_overloaded
from shared.artifacts import newest_artifact, resolve_artifact
from shared.batching import Batcher, NumericWorker, OverloadedError
from shared.config import env_int, env_port, required_env, setup_logging
from shared.data.normalize import normalize_hashtag
from shared.grpc_server import (
    GrpcServer,
    StartupError,
    k_or_abort,
    limits_or_abort,
    run_service,
    start_loading,
)
from shared.limits import (
    hashtag_problem,
    hashtags_problem,
    quoted,
    request_id_problem,
    user_id_problem,
)
from shared.scoring import photo_or_abort
from shared.sharding import UNSHARDED, Shard

log = logging.getLogger(__name__)
SERVICE_NAME = user_pb2.DESCRIPTOR.services_by_name["UserProfileService"].full_name
DEFAULT_PORT, DEFAULT_METRICS_PORT = "50054", "9104"
MAX_SCORE_K = 1000
MAX_RETRIEVE_K = 100
SNAPSHOT_EVERY = 1000
T = TypeVar("T")


class UserServicer:
    def __init__(self, lookup: UserHashtagLookup, journal: UpdateJournal,
                 model_version: str, snapshot_every: int = SNAPSHOT_EVERY,
                 shard: Shard = UNSHARDED) -> None:
        self.lookup, self.journal, self.model_version = lookup, journal, model_version
        self.snapshot_every, self.shard = snapshot_every, shard
        self.readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="user-read")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="user-write")
        # Score: the photos of concurrent calls in one lookup, on one numeric thread.
        self.worker = NumericWorker("user-score")
        self.scoring: Batcher[tuple[np.ndarray, str | None, int],
                              user_pb2.UserScoreResponse] = Batcher(
            "user scoring", self._score_batch, self.worker)

    async def _owned_or_abort(self, user_id: str, context: grpc.aio.ServicerContext,
                              ) -> None:
        """A user another shard owns: refused, so that nothing of theirs lands here."""
        if user_id and not self.shard.owns(user_id):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"user {quoted(user_id)} is not {self.shard}'s")

    async def _read(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.readers, work)

    async def _write(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer, work)

    def close(self) -> None:
        """After the drain: the last updates into a snapshot, so the next start is quick."""
        self.scoring.stop()
        self.worker.stop()
        self.readers.shutdown(wait=True)
        self.writer.submit(self._snapshot_if_new).result()
        self.writer.shutdown(wait=True)

    def _snapshot_if_new(self) -> None:
        if self.journal.since_snapshot:
            try:
                self.journal.snapshot(self.lookup)
            except OSError as error:  # the journal still holds every update
                log.error("user: snapshot failed, the journal keeps the updates: %s", error)

    def _score_batch(self, calls: list[tuple[np.ndarray, str | None, int]],
                     ) -> list[user_pb2.UserScoreResponse]:
        """The top hashtags of a batch of (photo features, user, k): one lookup."""
        depth = max(k for _, _, k in calls)
        lookup, version = self.lookup, self.model_version  # one model a batch (a swap)
        scores, ids = lookup.top_k(np.stack([features for features, _, _ in calls]),
                                   [user for _, user, _ in calls], depth)
        vocabulary, weight, mix = lookup.vocabulary, lookup.user_weight or 0.0, lookup.user_mix
        habits = lookup.habits([user for _, user, _ in calls], depth) if mix < 1 else None
        answers = []
        for row, (_, user, k) in enumerate(calls):
            top, rows = scores[row, :k], ids[row, :k]
            relative = np.exp(top - top[0]).tolist()
            hashtags = [(vocabulary[i], s, r) for i, s, r
                        in zip(rows.tolist(), top.tolist(), relative, strict=True)]
            if habits is not None and lookup.known(user):
                # the served user side: the model's answer mixed with the user's habits, each
                # at the call's own depth (as the fit mixed them), whatever else is batched
                hashtags = [(term, float(np.log(r)), r) for term, r in mix_user_answers(
                    [(term, r) for term, _, r in hashtags], habits[row][:k], mix)[:k]]
            answers.append(user_pb2.UserScoreResponse(
                hashtags=[user_pb2.UserHashtag(hashtag=term, score=s, relative_probability=r)
                          for term, s, r in hashtags],
                known_user=lookup.known(user), model_version=version, user_weight=weight,
                user_weight_fitted=lookup.user_weight is not None,
                communities=lookup.communities.posts(user)))
        return answers

    async def Score(self, request: user_pb2.UserScoreRequest,  # noqa: N802
                    context: grpc.aio.ServicerContext) -> user_pb2.UserScoreResponse:
        k = await k_or_abort(request.k, MAX_SCORE_K, context)
        await limits_or_abort(context, user_id_problem(request.user_id))
        await self._owned_or_abort(request.user_id, context)
        photo = await photo_or_abort(request.photo, context)
        try:
            return await self.scoring.submit((photo.features[0], request.user_id or None, k))
        except OverloadedError as error:
            await abort_overloaded(context, error)
            raise

    async def Communities(self, request: user_pb2.UserCommunitiesRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext,
                          ) -> user_pb2.UserCommunitiesResponse:
        await limits_or_abort(context, user_id_problem(request.user_id))
        await self._owned_or_abort(request.user_id, context)
        return user_pb2.UserCommunitiesResponse(
            posts=self.lookup.communities.posts(request.user_id))

    async def Update(self, request: user_pb2.UserUpdateRequest,  # noqa: N802
                     context: grpc.aio.ServicerContext) -> user_pb2.UserUpdateResponse:
        communities = dict(request.communities)
        await limits_or_abort(context, user_id_problem(request.user_id, required=True),
                              hashtags_problem(request.hashtags),
                              request_id_problem(request.request_id),
                              community_problem(communities))
        await self._owned_or_abort(request.user_id, context)
        photo = await photo_or_abort(request.photo, context)
        accepted, ignored, later = [], [], []
        for raw in request.hashtags:
            hashtag = normalize_hashtag(raw)
            if hashtag is None:
                ignored.append(f"{quoted(raw)}: no letters or digits")
            elif hashtag not in self.lookup.hashtag_rows:
                ignored.append(f"{quoted(hashtag)}: not in the vocabulary")
                if hashtag not in later:
                    later.append(hashtag)  # journaled: a later model may know it
            elif hashtag not in accepted:
                accepted.append(hashtag)
        if not accepted:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "no usable hashtag: " + ("; ".join(ignored) or "none given"))
        features, user, request_id = photo.features[0], request.user_id, request.request_id

        def learn() -> dict:
            lookup = self.lookup
            answered = lookup.requests.get(user, request_id)
            if answered is not None:  # a retry: the first answer, nothing learned again
                return answered
            row = lookup.user_index.get(user)
            answer = {"accepted": accepted, "ignored": ignored,
                      "posts": (0 if row is None else int(lookup.post_counts[row])) + 1,
                      "embedding_updated": lookup.tensor_active}
            self.journal.append(user, accepted + later, features, request.photo_id,
                                request_id=request_id, answer=answer if request_id else None,
                                communities=communities or None)
            known = [lookup.hashtag_rows[h] for h in accepted + later
                     if h in lookup.hashtag_rows]  # a model swapped in since the check
            if known:
                lookup.update(user, features, known)
            if request.photo_id:
                lookup.add_upload(request.photo_id, user, features)
            lookup.communities.add(user, communities)
            lookup.requests.put(user, request_id, answer)
            if self.journal.since_snapshot >= self.snapshot_every:
                self._snapshot_if_new()
            return answer

        try:
            answer = await self._write(learn)
        except JournalError as error:
            log.error("user: update not recorded: %s", error)
            await context.abort(grpc.StatusCode.UNAVAILABLE,  # the cause, not the path
                                "the update was not recorded (nothing was learned): cannot "
                                f"write the update journal: {os.strerror(error.errno or 5)}")
        return user_pb2.UserUpdateResponse(**answer)

    async def Photos(self, request: user_pb2.UserPhotosRequest,  # noqa: N802
                     context: grpc.aio.ServicerContext) -> user_pb2.UserPhotosResponse:
        await limits_or_abort(context, user_id_problem(request.user_id, required=True))
        await self._owned_or_abort(request.user_id, context)
        photos = await self._read(lambda: self._locked(
            lambda: self.lookup.owners.photos_of(request.user_id)))
        return user_pb2.UserPhotosResponse(photo_ids=photos)

    def swap_model(self, model_dir: Path, state_dir: Path | None) -> None:
        """On the writer thread: ``model_dir`` loaded and verified, the whole journal
        replayed into it by term, then served. No update lands between the replay and the
        switch (they wait on this thread); Score and Retrieve answer from the old model
        until the switch, and a batch in flight finishes on the one it started on."""
        lookup, journal = load_with_journal(model_dir, state_dir)
        self._snapshot_if_new()  # the old version restarts quickly if rolled back to
        self.lookup, self.journal, self.model_version = lookup, journal, model_dir.name

    def _locked(self, work: Callable[[], T]) -> T:
        with self.lookup.lock:
            return work()

    async def Forget(self, request: user_pb2.ForgetRequest,  # noqa: N802
                     context: grpc.aio.ServicerContext) -> user_pb2.ForgetResponse:
        await limits_or_abort(context, user_id_problem(request.user_id, required=True))
        await self._owned_or_abort(request.user_id, context)
        user, photo = request.user_id, request.photo_id or None

        def forget() -> tuple[list[str], bool] | None:
            if photo is not None and photo not in self.lookup.owners.photos_of(user):
                return None
            empty = np.zeros(0, np.float32)
            self.journal.append(user, [], empty, request.photo_id, kind="forget")
            released, removed = self.lookup.forget(user, photo)
            # What was taken back (the posts, the photo's features) leaves the disk now:
            # the journal is rewritten without it, the profiles snapshotted without it.
            self.journal.forget(user, photo)
            self._snapshot_if_new()
            return released, removed

        try:
            done = await self._write(forget)
        except JournalError as error:
            log.error("user: forget not recorded: %s", error)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the request was not recorded (nothing was removed)")
        if done is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"{quoted(request.photo_id)} is not among this user's photos")
        return user_pb2.ForgetResponse(photos_removed=len(done[0]), profile_removed=done[1])

    async def Retrieve(self, request: user_pb2.RetrieveRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> user_pb2.RetrieveResponse:
        k = await k_or_abort(request.k, MAX_RETRIEVE_K, context)
        await limits_or_abort(context, hashtag_problem(request.hashtag),
                              user_id_problem(request.user_id))
        await self._owned_or_abort(request.user_id, context)
        hashtag = normalize_hashtag(request.hashtag)
        if hashtag is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"hashtag {quoted(request.hashtag)} has no letters or digits")
        if hashtag not in self.lookup.hashtag_rows:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"hashtag {quoted(hashtag)} is not in the vocabulary")
        found = await self._read(lambda: self.lookup.retrieve(
            self.lookup.hashtag_rows[hashtag], request.user_id or None, k))
        return user_pb2.RetrieveResponse(
            photos=[user_pb2.RetrievedPhoto(photo_id=p, score=s) for p, s in found],
            model_version=self.model_version)


def journal_folder(model_dir: Path, state_dir: Path | None) -> Path:
    return (state_dir or model_dir.parent / "state") / model_dir.name


def load_with_journal(model_dir: Path, state_dir: Path | None,
                      ) -> tuple[UserHashtagLookup, UpdateJournal]:
    """The verified trained model with its newest profile snapshot and every later
    journaled update on it."""
    lookup = UserHashtagLookup.load(model_dir)
    journal = UpdateJournal(journal_folder(model_dir, state_dir))
    journal.recover(lookup)
    return lookup, journal


async def serve(host: str, port: int, model_dir: Path, state_dir: Path | None = None,
                metrics_port: int | None = None,
                snapshot_every: int = SNAPSHOT_EVERY, shard: Shard = UNSHARDED) -> GrpcServer:
    """Starts NOT_SERVING, loads and verifies the model, replays the journal, SERVING.
    StartupError when another process holds the journal (one writer a journal), the
    state belongs to another shard, or the port is taken."""
    lock = hold_state(journal_folder(model_dir, state_dir).parent)
    try:
        claim(journal_folder(model_dir, state_dir).parent, shard)
        server, late = await start_loading(
            SERVICE_NAME, user_pb2_grpc.add_UserProfileServiceServicer_to_server,
            "user model", host, port, metrics_port)
        lookup, journal = await asyncio.get_running_loop().run_in_executor(
            None, load_with_journal, model_dir, state_dir)
    except BaseException:
        lock.release()
        raise
    servicer = UserServicer(lookup, journal, model_dir.name, snapshot_every, shard)
    server.on_stop(servicer.close)
    server.on_stop(lock.release)  # after the last snapshot
    current = [model_dir]

    async def reload() -> None:
        """SIGHUP (`hashrec rollout`): the newest verified user model beside the serving
        one, swapped in live with every journaled update replayed into it."""
        newest = newest_artifact(current[0].parent, KIND)
        if newest is None or newest.name <= current[0].name:
            log.info("user: no model newer than %s; serving it still", current[0].name)
            return
        try:
            await servicer._write(lambda: servicer.swap_model(newest, state_dir))
        except Exception as error:  # any failure to load keeps the serving version
            log.error("user: refused model %s (%s: %s); still serving %s", newest.name,
                      type(error).__name__, error, current[0].name)
            return
        log.info("user: now serving model %s (was %s), %d users", newest.name,
                 current[0].name, len(servicer.lookup.user_ids))
        current[0] = newest

    server.reload = reload
    late.target = server.servicer = servicer
    await server.set_serving(True)
    log.info("user: %s; model %s, %d users, %d hashtags, %d photos; the three-way term is %s",
             shard, model_dir.name, len(lookup.user_ids), len(lookup.vocabulary),
             len(lookup.photo_ids), "active" if lookup.tensor_active else
             "zero (serving the main effects; updates move counts and lifts only)")
    return server


def shard_from_env() -> Shard:
    try:
        return Shard(env_int("HASHREC_USER_SHARD_INDEX", 0), env_int("HASHREC_USER_SHARDS", 1))
    except ValueError as error:
        raise StartupError(f"HASHREC_USER_SHARD_INDEX / HASHREC_USER_SHARDS: {error}") from None


async def _main() -> None:
    setup_logging()
    state = os.environ.get("HASHREC_USER_STATE")
    server = await serve(os.environ.get("HASHREC_USER_HOST", "127.0.0.1"),
                         env_port("HASHREC_USER_PORT", DEFAULT_PORT),
                         resolve_artifact(Path(required_env("HASHREC_USER_MODEL_DIR",
                                                            "the user model to serve")), KIND),
                         Path(state) if state else None,
                         env_port("HASHREC_USER_METRICS_PORT", DEFAULT_METRICS_PORT),
                         env_int("HASHREC_USER_SNAPSHOT_EVERY", SNAPSHOT_EVERY),
                         shard_from_env())
    server.stop_on_signals()
    server.reload_on_signal()  # the newest user model, swapped in live
    await server.wait()


if __name__ == "__main__":
    run_service(_main, "user")
