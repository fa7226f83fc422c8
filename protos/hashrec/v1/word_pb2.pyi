from hashrec.v1 import photo_pb2 as _photo_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SimilarRequest(_message.Message):
    __slots__ = ("hashtag", "k")
    HASHTAG_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    hashtag: str
    k: int
    def __init__(self, hashtag: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class SimilarHashtag(_message.Message):
    __slots__ = ("hashtag", "similarity")
    HASHTAG_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    hashtag: str
    similarity: float
    def __init__(self, hashtag: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class SimilarResponse(_message.Message):
    __slots__ = ("hashtags", "model_version")
    HASHTAGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    hashtags: _containers.RepeatedCompositeFieldContainer[SimilarHashtag]
    model_version: str
    def __init__(self, hashtags: _Optional[_Iterable[_Union[SimilarHashtag, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...
