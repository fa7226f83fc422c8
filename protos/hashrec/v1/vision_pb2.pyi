from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedRequest(_message.Message):
    __slots__ = ("image", "top_labels")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_LABELS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    top_labels: int
    def __init__(self, image: _Optional[bytes] = ..., top_labels: _Optional[int] = ...) -> None: ...

class MachineLabel(_message.Message):
    __slots__ = ("name", "probability")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    probability: float
    def __init__(self, name: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("features", "labels", "model_version", "image_sha256")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedCompositeFieldContainer[MachineLabel]
    model_version: str
    image_sha256: str
    def __init__(self, features: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[_Union[MachineLabel, _Mapping]]] = ..., model_version: _Optional[str] = ..., image_sha256: _Optional[str] = ...) -> None: ...
