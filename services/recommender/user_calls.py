"""The recommender's calls that write or read a user's own state: Feedback (a post
learned, routed by the gate's or the named community) and Retrieve, Photos and Forget,
each passed to the user's shard of the user service (transport only). A mixin of
RecommenderServicer (server.py), which holds the backends and the models."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
from hashrec.v1 import recommender_pb2, user_pb2

from services.recommender.backends import Backends, call_timeout, forward_error
from services.recommender.routing import post_communities
from shared.grpc_server import limits_or_abort
from shared.limits import hashtag_problem, hashtags_problem, user_id_problem
from shared.scoring import describe


class UserCalls:
    """Feedback, Retrieve, Photos and Forget of RecommenderService."""

    # what RecommenderServicer holds (server.py), with its _embed (the vision call)
    backends: Backends
    models: Any

    async def Feedback(self, request: recommender_pb2.FeedbackRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> user_pb2.UserUpdateResponse:
        await limits_or_abort(context, user_id_problem(request.user_id, required=True),
                              hashtags_problem(request.hashtags))
        if not request.hashtags:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no hashtags given")
        if self.backends.user is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no user service configured")
        try:
            mix = self.models.community_mix(request.community) if request.community else None
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise
        reply = await self._embed(request.image, context)
        description = describe(reply)
        communities = post_communities(self.models, description, mix)
        try:
            return await self.backends.user.for_user(request.user_id).Update(
                user_pb2.UserUpdateRequest(
                    user_id=request.user_id, photo=description, hashtags=request.hashtags,
                    photo_id=reply.image_sha256 or hashlib.sha256(request.image).hexdigest(),
                    request_id=request.request_id, communities=communities),
                timeout=call_timeout(self.backends.deadline, context))
        except grpc.aio.AioRpcError as error:
            await forward_error(self.backends.user.name(request.user_id) + " service",
                                error, context)
            raise

    async def Retrieve(self, request: user_pb2.RetrieveRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> user_pb2.RetrieveResponse:
        await limits_or_abort(context, hashtag_problem(request.hashtag),
                              user_id_problem(request.user_id))
        return await self._to_user_service("Retrieve", request, context)

    async def Photos(self, request: user_pb2.UserPhotosRequest,  # noqa: N802
                     context: grpc.aio.ServicerContext) -> user_pb2.UserPhotosResponse:
        return await self._to_user_service("Photos", request, context)

    async def Forget(self, request: user_pb2.ForgetRequest,  # noqa: N802
                     context: grpc.aio.ServicerContext) -> user_pb2.ForgetResponse:
        return await self._to_user_service("Forget", request, context)

    async def _to_user_service(self, method: str, request: object,
                               context: grpc.aio.ServicerContext) -> object:
        """The user service's answer to the same call (it checks the request)."""
        if self.backends.user is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no user service configured")
        try:
            return await getattr(self.backends.user.for_user(request.user_id), method)(
                request, timeout=call_timeout(self.backends.deadline, context))
        except grpc.aio.AioRpcError as error:
            await forward_error(self.backends.user.name(request.user_id) + " service",
                                error, context)
            raise
