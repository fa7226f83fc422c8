"""RecommenderService over gRPC: transport and orchestration; the math is in model.py and
shared/train.py.

A Recommend call asks VisionService for the photo's features and top machine labels
(with a deadline inside the caller's), scores the vocabulary with every trained method,
fuses, and answers the top k with the signals behind each hashtag.

Config from the environment: HASHREC_RECOMMENDER_HOST (127.0.0.1), HASHREC_RECOMMENDER_PORT
(50050), HASHREC_RECOMMENDER_METRICS_PORT (9100), HASHREC_VISION_TARGET (127.0.0.1:50051),
HASHREC_MODEL_DIR (a directory written by `hashrec train`), HASHREC_VISION_DEADLINE_S (10).
"""

from __future__ import annotations

import asyncio
import logging
import os
from functools import cache
from pathlib import Path

import grpc
import numpy as np
from hashrec.v1 import recommender_pb2, recommender_pb2_grpc, vision_pb2, vision_pb2_grpc

from services.recommender.model import normalized_rows
from services.vision.model import FEATURE_DIM, N_CLASSES, class_names
from shared.config import setup_logging
from shared.eval.metrics import top_k
from shared.grpc_server import CHANNEL_OPTIONS, GrpcServer
from shared.photos import MACHINE_LABELS_PER_PHOTO, PhotoSet
from shared.train import ImageModels, load_image_models

log = logging.getLogger(__name__)
SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name
MAX_K = 100
SIGNAL_DEPTH = 20


@cache
def class_rows() -> dict[str, int]:
    """ImageNet class name → output row, built once (not on every request)."""
    return {name: row for row, name in enumerate(class_names())}


def photo_from_embedding(reply: vision_pb2.EmbedResponse) -> PhotoSet:
    """The photo as the methods see it. Only the top machine labels travel; the methods use
    no more than those (MACHINE_LABELS_PER_PHOTO), so the rest of the distribution is 0."""
    if len(reply.features) != FEATURE_DIM:
        raise ValueError(f"vision answered {len(reply.features)} features, not {FEATURE_DIM}")
    index = class_rows()
    probabilities = np.zeros((1, N_CLASSES), dtype=np.float32)
    for label in reply.labels:
        probabilities[0, index[label.name]] = label.probability
    return PhotoSet(np.asarray(reply.features, dtype=np.float32)[None, :], probabilities)


class RecommenderServicer(recommender_pb2_grpc.RecommenderServiceServicer):
    def __init__(self, models: ImageModels, vision: vision_pb2_grpc.VisionServiceStub,
                 vision_deadline: float = 10.0) -> None:
        self.models, self.vision, self.vision_deadline = models, vision, vision_deadline

    async def Recommend(self, request: recommender_pb2.RecommendRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> recommender_pb2.RecommendResponse:
        k = request.k or 10
        if not 1 <= k <= MAX_K:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"k must be between 1 and {MAX_K} (0 means 10), got {k}")
        remaining = context.time_remaining()
        deadline = min(self.vision_deadline, remaining) if remaining else self.vision_deadline
        try:
            reply = await self.vision.Embed(
                vision_pb2.EmbedRequest(image=request.image,
                                        top_labels=MACHINE_LABELS_PER_PHOTO),
                timeout=deadline)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                await context.abort(code, error.details())
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"vision service: {code.name}: {error.details()}")
        photo = photo_from_embedding(reply)
        fused, per_method = await asyncio.get_running_loop().run_in_executor(
            None, self.models.scores, photo)
        return recommender_pb2.RecommendResponse(
            hashtags=self._answer(fused[0], {m: s[0] for m, s in per_method.items()}, k),
            model_version=self.models.version)

    def _answer(self, fused: np.ndarray, per_method: dict[str, np.ndarray],
                k: int) -> list[recommender_pb2.HashtagScore]:
        ranks, normalized = {}, {}
        for method, scores in per_method.items():
            order = top_k(scores[None, :], SIGNAL_DEPTH)[0]
            ranks[method] = {int(h): rank for rank, h in enumerate(order, start=1)}
            normalized[method] = normalized_rows(scores[None, :])[0]
        answer = []
        for h in top_k(fused[None, :], k)[0]:
            signals = sorted((recommender_pb2.Signal(method=m, score=float(normalized[m][h]),
                                                     rank=ranks[m][int(h)])
                              for m in per_method if int(h) in ranks[m]),
                             key=lambda signal: signal.rank)
            answer.append(recommender_pb2.HashtagScore(
                hashtag=self.models.vocabulary[h], score=float(fused[h]), signals=signals))
        return answer


async def serve(host: str, port: int, model_dir: Path, vision_target: str,
                metrics_port: int | None = None, vision_deadline: float = 10.0,
                ) -> GrpcServer:
    """Starts NOT_SERVING, loads and verifies the models, connects vision, then SERVING."""
    slot: list[RecommenderServicer] = []

    class Deferred(recommender_pb2_grpc.RecommenderServiceServicer):
        async def Recommend(self, request, context):  # noqa: N802
            if not slot:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "models are still loading")
            return await slot[0].Recommend(request, context)

    server = GrpcServer(
        [(SERVICE_NAME, lambda s: recommender_pb2_grpc.add_RecommenderServiceServicer_to_server(
            Deferred(), s))], host, port, metrics_port=metrics_port)
    await server.start()
    models = await asyncio.get_running_loop().run_in_executor(None, load_image_models,
                                                              model_dir)
    channel = grpc.aio.insecure_channel(vision_target, options=CHANNEL_OPTIONS)
    server.on_stop(lambda: asyncio.ensure_future(channel.close()))
    slot.append(RecommenderServicer(models, vision_pb2_grpc.VisionServiceStub(channel),
                                    vision_deadline))
    server.model_dir = model_dir  # type: ignore[attr-defined]
    await server.set_serving(True)
    log.info("recommender: model %s, %d hashtags, vision at %s", models.version,
             len(models.vocabulary), vision_target)
    return server


async def _main() -> None:
    setup_logging()
    server = await serve(
        os.environ.get("HASHREC_RECOMMENDER_HOST", "127.0.0.1"),
        int(os.environ.get("HASHREC_RECOMMENDER_PORT", "50050")),
        Path(os.environ["HASHREC_MODEL_DIR"]),
        os.environ.get("HASHREC_VISION_TARGET", "127.0.0.1:50051"),
        metrics_port=int(os.environ.get("HASHREC_RECOMMENDER_METRICS_PORT", "9100")),
        vision_deadline=float(os.environ.get("HASHREC_VISION_DEADLINE_S", "10")))
    server.stop_on_signals()
    await server.wait()


if __name__ == "__main__":
    asyncio.run(_main())
