"""GraphEmbeddingService over gRPC: transport only; the math is in services/graph/model.py.

Score: Zhong et al.'s joint image–hashtag–label graph, DeepWalk vectors; a new photo is
placed by its machine labels and its visual neighbours among the training photos.

Config from the environment: HASHREC_GRAPH_HOST (127.0.0.1), HASHREC_GRAPH_PORT (50053),
HASHREC_GRAPH_METRICS_PORT (9103),
HASHREC_MODEL_DIR (a `hashrec train` directory, or a folder of them: the newest).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from hashrec.v1 import graph_pb2, graph_pb2_grpc

from services.image_models import (
    KIND,
    ImageModels,
    load_image_models,
    served_methods,
    swap_on_reload,
)
from shared.artifacts import resolve_artifact
from shared.config import env_port, required_env, setup_logging
from shared.grpc_server import GrpcServer, run_service, start_loading
from shared.scoring import GRAPH_METHODS, VocabularyScorer

log = logging.getLogger(__name__)
SERVICE_NAME = graph_pb2.DESCRIPTOR.services_by_name["GraphEmbeddingService"].full_name
DEFAULT_PORT, DEFAULT_METRICS_PORT = "50053", "9103"


async def serve(host: str, port: int, model_dir: Path,
                metrics_port: int | None = None) -> GrpcServer:
    """Starts NOT_SERVING, loads and verifies the graph model, then SERVING."""
    server, late = await start_loading(
        SERVICE_NAME, graph_pb2_grpc.add_GraphEmbeddingServiceServicer_to_server,
        "graph model", host, port, metrics_port)
    models = await asyncio.get_running_loop().run_in_executor(
        None, lambda: load_image_models(model_dir, served_methods(model_dir, GRAPH_METHODS)))
    late.target = server.servicer = VocabularyScorer(models.methods, models.version)

    async def successor(models: ImageModels, serving: object) -> VocabularyScorer:
        return VocabularyScorer(models.methods, models.version, serving)

    server.on_stop(lambda: late.target.stop())
    swap_on_reload(server, late, "graph", model_dir, GRAPH_METHODS, successor)
    await server.set_serving(True)
    log.info("graph: model %s, %d hashtags", models.version, len(models.vocabulary))
    return server


async def _main() -> None:
    setup_logging()
    server = await serve(os.environ.get("HASHREC_GRAPH_HOST", "127.0.0.1"),
                         env_port("HASHREC_GRAPH_PORT", DEFAULT_PORT),
                         resolve_artifact(Path(required_env("HASHREC_MODEL_DIR",
                                                            "the model to serve")), KIND),
                         env_port("HASHREC_GRAPH_METRICS_PORT", DEFAULT_METRICS_PORT))
    server.stop_on_signals()
    server.reload_on_signal()
    await server.wait()


if __name__ == "__main__":
    run_service(_main, "graph")
