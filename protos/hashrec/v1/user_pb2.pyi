from hashrec.v1 import photo_pb2 as _photo_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserCommunitiesRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class UserCommunitiesResponse(_message.Message):
    __slots__ = ("posts",)
    class PostsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    POSTS_FIELD_NUMBER: _ClassVar[int]
    posts: _containers.ScalarMap[str, float]
    def __init__(self, posts: _Optional[_Mapping[str, float]] = ...) -> None: ...

class UserScoreRequest(_message.Message):
    __slots__ = ("photo", "user_id", "k")
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    photo: _photo_pb2.PhotoDescription
    user_id: str
    k: int
    def __init__(self, photo: _Optional[_Union[_photo_pb2.PhotoDescription, _Mapping]] = ..., user_id: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class UserHashtag(_message.Message):
    __slots__ = ("hashtag", "score", "relative_probability")
    HASHTAG_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    hashtag: str
    score: float
    relative_probability: float
    def __init__(self, hashtag: _Optional[str] = ..., score: _Optional[float] = ..., relative_probability: _Optional[float] = ...) -> None: ...

class UserScoreResponse(_message.Message):
    __slots__ = ("hashtags", "known_user", "model_version", "user_weight", "user_weight_fitted", "communities")
    class CommunitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    HASHTAGS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_USER_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    USER_WEIGHT_FITTED_FIELD_NUMBER: _ClassVar[int]
    COMMUNITIES_FIELD_NUMBER: _ClassVar[int]
    hashtags: _containers.RepeatedCompositeFieldContainer[UserHashtag]
    known_user: bool
    model_version: str
    user_weight: float
    user_weight_fitted: bool
    communities: _containers.ScalarMap[str, float]
    def __init__(self, hashtags: _Optional[_Iterable[_Union[UserHashtag, _Mapping]]] = ..., known_user: _Optional[bool] = ..., model_version: _Optional[str] = ..., user_weight: _Optional[float] = ..., user_weight_fitted: _Optional[bool] = ..., communities: _Optional[_Mapping[str, float]] = ...) -> None: ...

class UserUpdateRequest(_message.Message):
    __slots__ = ("user_id", "photo", "hashtags", "photo_id", "request_id", "communities")
    class CommunitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    HASHTAGS_FIELD_NUMBER: _ClassVar[int]
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMMUNITIES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    photo: _photo_pb2.PhotoDescription
    hashtags: _containers.RepeatedScalarFieldContainer[str]
    photo_id: str
    request_id: str
    communities: _containers.ScalarMap[str, float]
    def __init__(self, user_id: _Optional[str] = ..., photo: _Optional[_Union[_photo_pb2.PhotoDescription, _Mapping]] = ..., hashtags: _Optional[_Iterable[str]] = ..., photo_id: _Optional[str] = ..., request_id: _Optional[str] = ..., communities: _Optional[_Mapping[str, float]] = ...) -> None: ...

class UserUpdateResponse(_message.Message):
    __slots__ = ("accepted", "ignored", "posts", "embedding_updated")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FIELD_NUMBER: _ClassVar[int]
    POSTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_UPDATED_FIELD_NUMBER: _ClassVar[int]
    accepted: _containers.RepeatedScalarFieldContainer[str]
    ignored: _containers.RepeatedScalarFieldContainer[str]
    posts: int
    embedding_updated: bool
    def __init__(self, accepted: _Optional[_Iterable[str]] = ..., ignored: _Optional[_Iterable[str]] = ..., posts: _Optional[int] = ..., embedding_updated: _Optional[bool] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("hashtag", "user_id", "k")
    HASHTAG_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    hashtag: str
    user_id: str
    k: int
    def __init__(self, hashtag: _Optional[str] = ..., user_id: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class RetrievedPhoto(_message.Message):
    __slots__ = ("photo_id", "score")
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    photo_id: str
    score: float
    def __init__(self, photo_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("photos", "model_version")
    PHOTOS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    photos: _containers.RepeatedCompositeFieldContainer[RetrievedPhoto]
    model_version: str
    def __init__(self, photos: _Optional[_Iterable[_Union[RetrievedPhoto, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class UserPhotosRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class UserPhotosResponse(_message.Message):
    __slots__ = ("photo_ids",)
    PHOTO_IDS_FIELD_NUMBER: _ClassVar[int]
    photo_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, photo_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("user_id", "photo_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PHOTO_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    photo_id: str
    def __init__(self, user_id: _Optional[str] = ..., photo_id: _Optional[str] = ...) -> None: ...

class ForgetResponse(_message.Message):
    __slots__ = ("photos_removed", "profile_removed")
    PHOTOS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    PROFILE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    photos_removed: int
    profile_removed: bool
    def __init__(self, photos_removed: _Optional[int] = ..., profile_removed: _Optional[bool] = ...) -> None: ...
