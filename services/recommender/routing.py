"""Which community a photo is scored as (issue #28): the one its request names, else the
gate's guess weighted by where a known user posts, else the gate's guess alone; what the
answer says of it; and what a post adds to where its user posts. Transport glue around
the math of GatedMethod.mix and community_prior (model.py)."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import numpy as np
from hashrec.v1 import photo_pb2, recommender_pb2, user_pb2

from services.image_models import ImageModels
from services.recommender.backends import reason
from services.recommender.model import community_prior
from shared.scoring import photo_set

#: what a degraded answer names when the user service did not say where the user posts
USER_COMMUNITIES = "user communities"
#: a community below this share of a post is not counted for its user
MIN_POST_SHARE = 0.01


async def where_user_posts(user_service: object, user_id: str,
                           communities: tuple[str, ...], timeout: float,
                           ) -> tuple[np.ndarray | None, str | None]:
    """(P(c | u) from the user's posts by community, rounded to 0.01 so that a user's
    answers share cache entries until their habits move, or None when the model has one
    community or the user posted none; why the user's communities are missing when the
    user service did not answer: the answer is then degraded, routed by the gate)."""
    if len(communities) < 2:
        return None, None
    try:
        reply = await user_service.Communities(
            user_pb2.UserCommunitiesRequest(user_id=user_id), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return None, reason(USER_COMMUNITIES, error)
    return user_mix(reply.posts, communities), None


def user_mix(posts: Mapping[str, float], communities: tuple[str, ...]) -> np.ndarray | None:
    """P(c | u) from a user's posts by community, rounded to 0.01 (see where_user_posts);
    None when the model has one community or the user posted none."""
    prior = community_prior(posts, communities)
    return None if prior is None else np.maximum(np.round(prior, 2), 0.01)



def say_communities(reply: recommender_pb2.RecommendResponse, models: ImageModels,
                    description: photo_pb2.PhotoDescription, mix: np.ndarray | None,
                    routed_by: str) -> None:
    """How the photo's community was decided, and the mix the methods used."""
    shares = models.communities_of(photo_set(description).routed(mix))
    if shares is None:
        return
    reply.community_from = routed_by
    del reply.communities[:]
    reply.communities.extend(
        recommender_pb2.CommunityShare(name=name, weight=round(float(weight), 4))
        for name, weight in zip(models.communities, shares[0], strict=True))


def post_communities(models: ImageModels, description: photo_pb2.PhotoDescription,
                     mix: np.ndarray | None) -> dict[str, float]:
    """What a post adds to where its user posts: the community named (``mix``), else the
    gate's guess; empty for a model of one community."""
    shares = models.communities_of(photo_set(description).routed(mix))
    if shares is None:
        return {}
    return {name: float(weight) for name, weight in zip(models.communities, shares[0],
                                                        strict=True)
            if weight >= MIN_POST_SHARE}
