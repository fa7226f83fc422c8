"""VisionService over gRPC: transport only; the math is in services/vision/model.py.

Concurrent requests are batched dynamically (shared/batching.py): the first waiting photo
opens a batch that closes at ``max_batch`` photos or after ``max_delay`` seconds, whichever
comes first, and runs on the service's one model thread.
bench/vision.py measured batch 1 as the fastest per image on a 2-core CPU and batch 8 as
2.2x faster than eager PyTorch, so the CPU default is small (4); a GPU wants more.

Photo features are cached by the sha256 of the image bytes (shared/cache.py: Redis when
HASHREC_REDIS_URL is set, else in-process), so a photo seen before skips decode and model.

Config from the environment: HASHREC_VISION_HOST (127.0.0.1), HASHREC_VISION_PORT (50051),
HASHREC_VISION_METRICS_PORT (9101), HASHREC_VISION_MAX_BATCH (4, 32 on CUDA),
HASHREC_VISION_MAX_DELAY_MS (5), HASHREC_VISION_HALF (1: fp16 on CUDA),
HASHREC_REDIS_URL (unset: in-process cache),
HASHREC_REDIS_PASSWORD (Redis AUTH).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import torch
from hashrec.v1 import vision_pb2, vision_pb2_grpc

from services.vision.model import (
    FEATURE_DIM,
    ImageError,
    VisionModel,
    check_header,
    decode_image,
    decode_jpeg_on_gpu,
    gpu_decoding_available,
    preprocess,
)
from shared.admission import abort_overloaded
from shared.batching import Batcher, NumericWorker, OverloadedError, service_threads
from shared.cache import Cache, LruCache, cache_key, make_cache
from shared.config import env_int, env_port, setup_logging
from shared.grpc_server import GrpcServer, run_service, start_loading

log = logging.getLogger(__name__)
SERVICE_NAME = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name
DEFAULT_PORT, DEFAULT_METRICS_PORT = "50051", "9101"


def embed_batch(model: VisionModel, buckets: bool = False) -> Callable[
        [list[torch.Tensor]], list[tuple[np.ndarray, np.ndarray]]]:
    """One forward pass over a batch of preprocessed photos: (features, class
    probabilities) for each. ``buckets``: the batch is padded to the next power of two, so
    that a compiled model meets a handful of shapes (a CUDA model compiles its kernels
    once per shape: unpadded, every new batch size stalled the service for seconds)."""
    def run(tensors: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        # GPU-decoded JPEGs already sit on the device; Pillow's tensors join them there.
        batch = torch.stack([t.to(model.device) for t in tensors])
        if buckets:
            size = bucket(len(tensors))
            if size > len(tensors):
                batch = torch.cat([batch, batch.new_zeros((size - len(tensors),
                                                           *batch.shape[1:]))])
        result = model.embed_tensors(batch)
        return [(result.features[row], result.probabilities[row])
                for row in range(len(tensors))]

    return run


def bucket(size: int) -> int:
    """The padded batch size: the next power of two."""
    return 1 << (size - 1).bit_length()


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, model: VisionModel, batcher: Batcher, cache: Cache) -> None:
        self.model, self.batcher = model, batcher
        self.cache = cache
        # Decoding (Pillow releases the GIL) on as many threads as the service has cores:
        # on a GPU machine the CPU's decoding, not the model, bounds the photos a second.
        self.decoder = ThreadPoolExecutor(max_workers=max(2, service_threads()),
                                          thread_name_prefix="decode")
        # nvJPEG with the gpu extra on a CUDA model; Pillow otherwise and for other formats.
        self.gpu_jpeg = model.device.type == "cuda" and gpu_decoding_available()

    def _decode(self, data: bytes) -> torch.Tensor:
        if self.gpu_jpeg and check_header(data) == "JPEG":
            return decode_jpeg_on_gpu(data, self.model.device, self.model.image_size)
        return preprocess(decode_image(data), self.model.image_size)

    async def Embed(self, request: vision_pb2.EmbedRequest,  # noqa: N802 - gRPC name
                    context: grpc.aio.ServicerContext) -> vision_pb2.EmbedResponse:
        top = request.top_labels or 5
        if not 1 <= top <= 1000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"top_labels must be between 1 and 1000, got {top}")
        data = request.image
        digest = hashlib.sha256(data).hexdigest()
        model_id = self.model.backbone.id
        key = cache_key("features", model_id, digest)
        cached = self.cache.get(key)
        if cached is not None:
            features, probabilities = cached[:FEATURE_DIM], cached[FEATURE_DIM:]
        else:
            try:
                tensor = await asyncio.get_running_loop().run_in_executor(
                    self.decoder, self._decode, data)
            except ImageError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            try:
                features, probabilities = await self.batcher.submit(tensor)
            except OverloadedError as error:
                await abort_overloaded(context, error)
            self.cache.set(key, np.concatenate([features, probabilities]))
        labels = self.model.top_labels(probabilities[None, :], top)[0]
        return vision_pb2.EmbedResponse(
            features=features.tolist(), model_version=model_id, image_sha256=digest,
            labels=[vision_pb2.MachineLabel(name=name, probability=p) for name, p in labels])


async def serve(host: str, port: int, model: VisionModel | None = None,
                max_batch: int | None = None, max_delay: float = 0.005,
                cache: Cache | None = None, metrics_port: int | None = None,
                max_queued: int = 256) -> GrpcServer:
    """Starts the server (health NOT_SERVING), loads the model, then reports SERVING.
    Past ``max_queued`` photos waiting for the model, Embed answers RESOURCE_EXHAUSTED."""
    server, late = await start_loading(
        SERVICE_NAME, vision_pb2_grpc.add_VisionServiceServicer_to_server, "vision model",
        host, port, metrics_port)
    loop = asyncio.get_running_loop()
    model = model or await loop.run_in_executor(None, VisionModel)
    batch = max_batch or (32 if model.device.type == "cuda" else 4)
    worker = NumericWorker("vision-model")
    on_gpu = model.device.type == "cuda"
    if on_gpu:  # every padded shape compiled before the first caller waits for it
        shape = (3, model.image_size, model.image_size)
        for size in sorted({bucket(n) for n in range(1, batch + 1)}):
            for _ in range(3):  # TorchScript optimises a shape on its second or third run
                await worker.run(lambda size=size: model.embed_tensors(
                    torch.zeros(size, *shape)))
    batcher = Batcher("vision", embed_batch(model, buckets=on_gpu), worker, batch, max_delay,
                      max_queued)
    server.on_stop(batcher.stop)
    server.on_stop(worker.stop)
    late.target = VisionServicer(model, batcher, cache if cache is not None else LruCache())
    await server.set_serving(True)
    server.batcher = batcher  # type: ignore[attr-defined]
    return server


async def _main() -> None:
    setup_logging()
    server = await serve(os.environ.get("HASHREC_VISION_HOST", "127.0.0.1"),
                         env_port("HASHREC_VISION_PORT", DEFAULT_PORT),
                         max_batch=env_int("HASHREC_VISION_MAX_BATCH", "0") or None,
                         max_delay=float(os.environ.get("HASHREC_VISION_MAX_DELAY_MS", "5"))
                         / 1000,
                         cache=make_cache(os.environ.get("HASHREC_REDIS_URL")),
                         metrics_port=env_port("HASHREC_VISION_METRICS_PORT", DEFAULT_METRICS_PORT))
    server.stop_on_signals()
    server.reload_on_signal()  # nothing to reload: SIGHUP is logged, not fatal
    await server.wait()


if __name__ == "__main__":
    run_service(_main, "vision")
