"""The shapes of the gateway's JSON answers and bodies (its OpenAPI description)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.limits import MAX_COMMUNITY_CHARS

MAX_HASHTAGS = 100


class Signal(BaseModel):
    method: str
    score: float
    rank: int


class HashtagAnswer(BaseModel):
    hashtag: str
    score: float
    signals: list[Signal]
    outside_vocabulary: bool = False


class CommunityShare(BaseModel):
    name: str
    weight: float


class RecommendAnswer(BaseModel):
    hashtags: list[HashtagAnswer]
    model_version: str
    degraded: bool
    degraded_reasons: list[str]
    image_sha256: str = Field(description="the photo's id: for a signed-in person, the "
                              "sha256 of the upload as kept, which feedback can name")
    community_from: str = Field("", description='how the photo\'s community was decided: '
                                '"request", "user" (read from it, weighted by where the '
                                'user posts), "photo" (read from it), or "" (one '
                                'community)')
    communities: list[CommunityShare] = Field(default_factory=list, description="the "
                                              "community mix the methods were weighted by")


class FeedbackBody(BaseModel):
    hashtags: list[str] = Field(min_length=1, max_length=MAX_HASHTAGS)
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: a UUID the client makes once per save and sends again on a retry
    request_id: str = Field("", max_length=128)
    #: read only with HASHREC_AUTH=none; otherwise the signed-in person is the user
    user: str = Field("", max_length=256)
    #: where the photo is posted (/api/config's communities); empty: read from the photo
    community: str = Field("", max_length=MAX_COMMUNITY_CHARS)


class FeedbackAnswer(BaseModel):
    accepted: list[str]
    ignored: list[str]
    posts: int
    embedding_updated: bool


class RetrievedPhoto(BaseModel):
    photo_id: str
    score: float
    url: str | None


class RetrieveAnswer(BaseModel):
    photos: list[RetrievedPhoto]
    model_version: str


class PageConfig(BaseModel):
    #: the largest photo an upload may be
    max_upload_bytes: int
    #: how a person signs in: "none", "local" (accounts here) or "oidc"
    auth: str
    #: the communities a photo can be posted to (RecommendRequest.community); empty for a
    #: model of one community, or while the recommender does not answer
    communities: list[str]


class ErrorBody(BaseModel):
    error: str
    message: str


ERRORS = {status: {"model": ErrorBody}
          for status in (400, 401, 403, 404, 408, 413, 415, 429, 503, 504)}
