from hashrec.v1 import vision_pb2 as _vision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PhotoDescription(_message.Message):
    __slots__ = ("features", "labels", "vision_model_version")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VISION_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedCompositeFieldContainer[_vision_pb2.MachineLabel]
    vision_model_version: str
    def __init__(self, features: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[_Union[_vision_pb2.MachineLabel, _Mapping]]] = ..., vision_model_version: _Optional[str] = ...) -> None: ...

class MethodScores(_message.Message):
    __slots__ = ("method", "scores", "outside_hashtags", "outside_scores")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_HASHTAGS_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_SCORES_FIELD_NUMBER: _ClassVar[int]
    method: str
    scores: _containers.RepeatedScalarFieldContainer[float]
    outside_hashtags: _containers.RepeatedScalarFieldContainer[str]
    outside_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, method: _Optional[str] = ..., scores: _Optional[_Iterable[float]] = ..., outside_hashtags: _Optional[_Iterable[str]] = ..., outside_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class VocabularyScores(_message.Message):
    __slots__ = ("model_version", "methods")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    methods: _containers.RepeatedCompositeFieldContainer[MethodScores]
    def __init__(self, model_version: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[MethodScores, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("photo", "model_version", "outside_hashtags_known", "community_weights")
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_HASHTAGS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    COMMUNITY_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    photo: PhotoDescription
    model_version: str
    outside_hashtags_known: bool
    community_weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, photo: _Optional[_Union[PhotoDescription, _Mapping]] = ..., model_version: _Optional[str] = ..., outside_hashtags_known: _Optional[bool] = ..., community_weights: _Optional[_Iterable[float]] = ...) -> None: ...
