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

class VocabularyScores(_message.Message):
    __slots__ = ("scores", "model_version")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("photo",)
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    photo: PhotoDescription
    def __init__(self, photo: _Optional[_Union[PhotoDescription, _Mapping]] = ...) -> None: ...
