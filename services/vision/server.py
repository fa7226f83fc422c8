"""VisionService over gRPC: transport only; the math is in services/vision/model.py.

Concurrent requests are batched dynamically: the first waiting photo opens a batch that
closes at ``max_batch`` photos or after ``max_delay`` seconds, whichever comes first.
bench/vision.py measured batch 1 as the fastest per image on a 2-core CPU and batch 8 as
2.2x faster than eager PyTorch, so the CPU default is small (4); a GPU wants more.

Photo features are cached by the sha256 of the image bytes (shared/cache.py: Redis when
HASHREC_REDIS_URL is set, else in-process), so a photo seen before skips decode and model.

Config from the environment: HASHREC_VISION_HOST (127.0.0.1), HASHREC_VISION_PORT (50051),
HASHREC_VISION_METRICS_PORT (9101), HASHREC_VISION_MAX_BATCH (4, 32 on CUDA),
HASHREC_VISION_MAX_DELAY_MS (5), HASHREC_REDIS_URL (unset: in-process cache),
HASHREC_REDIS_PASSWORD (Redis AUTH).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
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
from shared.cache import Cache, LruCache, cache_key, make_cache
from shared.config import setup_logging
from shared.grpc_server import GrpcServer, start_loading

log = logging.getLogger(__name__)
SERVICE_NAME = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name
DEFAULT_PORT, DEFAULT_METRICS_PORT = "50051", "9101"


class MicroBatcher:
    """Collects concurrent photos into one forward pass (max_batch photos or max_delay)."""

    def __init__(self, model: VisionModel, max_batch: int, max_delay: float) -> None:
        self.model, self.max_batch, self.max_delay = model, max_batch, max_delay
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = 0  # forward passes run, for tests and metrics
        # One thread for the network: torch already uses every core inside a pass.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vision-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False)

    async def embed(self, tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((tensor, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_delay
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            # GPU-decoded JPEGs already sit on the device; Pillow's tensors join them there.
            tensors = torch.stack([tensor.to(self.model.device) for tensor, _ in batch])
            try:
                result = await loop.run_in_executor(self.executor, self.model.embed_tensors,
                                                    tensors)
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            for row, (_, future) in enumerate(batch):
                if not future.done():  # the caller may have gone (deadline, cancel)
                    future.set_result((result.features[row], result.probabilities[row]))


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, batcher: MicroBatcher, cache: Cache) -> None:
        self.batcher = batcher
        self.cache = cache
        self.decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        # nvJPEG with the gpu extra on a CUDA model; Pillow otherwise and for other formats.
        self.gpu_jpeg = batcher.model.device.type == "cuda" and gpu_decoding_available()

    def _decode(self, data: bytes) -> torch.Tensor:
        if self.gpu_jpeg and check_header(data) == "JPEG":
            return decode_jpeg_on_gpu(data, self.batcher.model.device,
                                      self.batcher.model.image_size)
        return preprocess(decode_image(data), self.batcher.model.image_size)

    async def Embed(self, request: vision_pb2.EmbedRequest,  # noqa: N802 - gRPC name
                    context: grpc.aio.ServicerContext) -> vision_pb2.EmbedResponse:
        top = request.top_labels or 5
        if not 1 <= top <= 1000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"top_labels must be between 1 and 1000, got {top}")
        data = request.image
        digest = hashlib.sha256(data).hexdigest()
        model_id = self.batcher.model.backbone.id
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
            features, probabilities = await self.batcher.embed(tensor)
            self.cache.set(key, np.concatenate([features, probabilities]))
        labels = self.batcher.model.top_labels(probabilities[None, :], top)[0]
        return vision_pb2.EmbedResponse(
            features=features.tolist(), model_version=model_id, image_sha256=digest,
            labels=[vision_pb2.MachineLabel(name=name, probability=p) for name, p in labels])


async def serve(host: str, port: int, model: VisionModel | None = None,
                max_batch: int | None = None, max_delay: float = 0.005,
                cache: Cache | None = None, metrics_port: int | None = None) -> GrpcServer:
    """Starts the server (health NOT_SERVING), loads the model, then reports SERVING."""
    server, late = await start_loading(
        SERVICE_NAME, vision_pb2_grpc.add_VisionServiceServicer_to_server, "vision model",
        host, port, metrics_port)
    loop = asyncio.get_running_loop()
    model = model or await loop.run_in_executor(None, VisionModel)
    batch = max_batch or (32 if model.device.type == "cuda" else 4)
    batcher = MicroBatcher(model, batch, max_delay)
    batcher.start()
    server.on_stop(batcher.stop)
    late.target = VisionServicer(batcher, cache if cache is not None else LruCache())
    await server.set_serving(True)
    server.batcher = batcher  # type: ignore[attr-defined]
    return server


async def _main() -> None:
    setup_logging()
    server = await serve(os.environ.get("HASHREC_VISION_HOST", "127.0.0.1"),
                         int(os.environ.get("HASHREC_VISION_PORT", DEFAULT_PORT)),
                         max_batch=int(os.environ.get("HASHREC_VISION_MAX_BATCH", "0")) or None,
                         max_delay=float(os.environ.get("HASHREC_VISION_MAX_DELAY_MS", "5"))
                         / 1000,
                         cache=make_cache(os.environ.get("HASHREC_REDIS_URL")),
                         metrics_port=int(os.environ.get("HASHREC_VISION_METRICS_PORT",
                                        DEFAULT_METRICS_PORT)))
    server.stop_on_signals()
    server.reload_on_signal()  # nothing to reload: SIGHUP is logged, not fatal
    await server.wait()


if __name__ == "__main__":
    asyncio.run(_main())
