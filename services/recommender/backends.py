"""The services the recommender calls: their stubs and deadlines, and what a caller is
told when one fails (transport only)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from hashrec.v1 import graph_pb2_grpc, user_pb2_grpc, vision_pb2_grpc, word_pb2_grpc

from shared.config import AtMostEvery
from shared.grpc_server import names_an_address
from shared.sharding import shard_of

log = logging.getLogger(__name__)
log.addFilter(AtMostEvery())  # a backend down fails every call: a line every 10 s


@dataclass
class UserShards:
    """The user service's shards, in shard order: a user's calls go to the shard that
    owns them (jump consistent hashing of the user id, shared/sharding.py); a call with
    no user (the user-agnostic model, the training photos) to each in turn."""

    stubs: Sequence[user_pb2_grpc.UserProfileServiceStub]
    _turns: itertools.cycle = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.stubs:
            raise ValueError("no user shard")
        self._turns = itertools.cycle(range(len(self.stubs)))

    def for_user(self, user_id: str) -> user_pb2_grpc.UserProfileServiceStub:
        if not user_id:
            return self.stubs[next(self._turns)]
        return self.stubs[shard_of(user_id, len(self.stubs))]

    def name(self, user_id: str) -> str:
        """How a failure is named: "user", or "user shard i" where there are several."""
        if len(self.stubs) == 1 or not user_id:
            return "user"
        return f"user shard {shard_of(user_id, len(self.stubs))}"


@dataclass
class Backends:
    """Stubs of the services the recommender calls; None: not used."""

    vision: vision_pb2_grpc.VisionServiceStub
    word: word_pb2_grpc.WordEmbeddingServiceStub | None = None
    graph: graph_pb2_grpc.GraphEmbeddingServiceStub | None = None
    user: UserShards | None = None
    vision_deadline: float = 10.0
    deadline: float = 5.0


def call_timeout(limit: float, context: grpc.aio.ServicerContext) -> float:
    """The backend's own deadline, never past the caller's."""
    remaining = context.time_remaining()
    return min(limit, remaining) if remaining is not None else limit


def said(backend: str, status: str) -> str:
    """What a client is told of a failed call: the backend and its status in words."""
    return f"{backend}: {status.lower().replace('_', ' ')}"


def reason(backend: str, error: BaseException) -> str:
    """What a client is told: the backend by name and what went wrong in a word or two.
    The details (addresses, exception text) go to the log only."""
    if isinstance(error, grpc.aio.AioRpcError):
        log.warning("recommender: %s: %s: %s", backend, error.code().name, error.details())
        return said(backend, error.code().name)
    log.warning("recommender: %s failed: %s: %s", backend, type(error).__name__, error)
    return f"{backend}: failed"


async def forward_error(backend: str, error: grpc.aio.AioRpcError,
                        context: grpc.aio.ServicerContext) -> None:
    """The caller's own mistakes pass through; the backend's trouble is UNAVAILABLE."""
    code = error.code()
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        await context.abort(code, error.details())
    details = error.details() or ""
    log.warning("recommender: %s: %s: %s", backend, code.name, details)
    # The backend's own words (the journal is full) help the caller; gRPC's words
    # about reaching it name addresses, which stay in the log.
    own_words = "" if names_an_address(details) or code != grpc.StatusCode.UNAVAILABLE \
        else f": {details}"
    await context.abort(grpc.StatusCode.UNAVAILABLE, said(backend, code.name) + own_words)
