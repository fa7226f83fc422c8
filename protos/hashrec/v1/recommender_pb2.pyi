from hashrec.v1 import user_pb2 as _user_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CommunitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CommunitiesResponse(_message.Message):
    __slots__ = ("names", "model_version")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    def __init__(self, names: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("image", "user_id", "k", "community")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    COMMUNITY_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    user_id: str
    k: int
    community: str
    def __init__(self, image: _Optional[bytes] = ..., user_id: _Optional[str] = ..., k: _Optional[int] = ..., community: _Optional[str] = ...) -> None: ...

class Signal(_message.Message):
    __slots__ = ("method", "score", "rank")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    method: str
    score: float
    rank: int
    def __init__(self, method: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class HashtagScore(_message.Message):
    __slots__ = ("hashtag", "score", "signals", "outside_vocabulary")
    HASHTAG_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    hashtag: str
    score: float
    signals: _containers.RepeatedCompositeFieldContainer[Signal]
    outside_vocabulary: bool
    def __init__(self, hashtag: _Optional[str] = ..., score: _Optional[float] = ..., signals: _Optional[_Iterable[_Union[Signal, _Mapping]]] = ..., outside_vocabulary: _Optional[bool] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("hashtags", "model_version", "degraded", "degraded_reasons", "community_from", "communities")
    HASHTAGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    COMMUNITY_FROM_FIELD_NUMBER: _ClassVar[int]
    COMMUNITIES_FIELD_NUMBER: _ClassVar[int]
    hashtags: _containers.RepeatedCompositeFieldContainer[HashtagScore]
    model_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[str]
    community_from: str
    communities: _containers.RepeatedCompositeFieldContainer[CommunityShare]
    def __init__(self, hashtags: _Optional[_Iterable[_Union[HashtagScore, _Mapping]]] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[str]] = ..., community_from: _Optional[str] = ..., communities: _Optional[_Iterable[_Union[CommunityShare, _Mapping]]] = ...) -> None: ...

class CommunityShare(_message.Message):
    __slots__ = ("name", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("image", "user_id", "hashtags", "request_id", "community")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HASHTAGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMMUNITY_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    user_id: str
    hashtags: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    community: str
    def __init__(self, image: _Optional[bytes] = ..., user_id: _Optional[str] = ..., hashtags: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., community: _Optional[str] = ...) -> None: ...
