"""WordEmbeddingService over gRPC: transport only; the math is in services/word/model.py.

Score: the word-level photo → hashtag methods of the served `hashrec train` directory, for
one photo: InstaHash's label → hashtag expansion (word), and where the model holds them
the semantic method (with hashtags outside the vocabulary) and AutoRec. Similar: nearest
hashtags in the word-vector space.

Config from the environment: HASHREC_WORD_HOST (127.0.0.1), HASHREC_WORD_PORT (50052),
HASHREC_WORD_METRICS_PORT (9102),
HASHREC_MODEL_DIR (a `hashrec train` directory, or a folder of them: the newest).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc
from hashrec.v1 import word_pb2, word_pb2_grpc

from services.image_models import (
    KIND,
    ImageModels,
    load_image_models,
    served_methods,
    swap_on_reload,
)
from services.word.model import InstaHashMethod, SimilarAcrossSpaces
from shared.artifacts import resolve_artifact
from shared.config import env_port, required_env, setup_logging
from shared.data.normalize import normalize_hashtag
from shared.grpc_server import GrpcServer, k_or_abort, limits_or_abort, run_service, start_loading
from shared.limits import hashtag_problem, quoted
from shared.scoring import WORD_METHODS, VocabularyScorer

log = logging.getLogger(__name__)
SERVICE_NAME = word_pb2.DESCRIPTOR.services_by_name["WordEmbeddingService"].full_name
DEFAULT_PORT, DEFAULT_METRICS_PORT = "50052", "9102"
MAX_K = 100


class WordServicer(VocabularyScorer):
    def __init__(self, methods: dict[str, object], vocabulary: tuple[str, ...],
                 model_version: str, previous: VocabularyScorer | None = None) -> None:
        super().__init__(methods, model_version, previous)
        #: None: the model was trained without the word method, whose vectors these are
        self.similar: SimilarAcrossSpaces | None = None
        if "word" in methods:  # InstaHashMethod, or one per community (GatedMethod)
            inner: list[InstaHashMethod] = getattr(methods["word"], "inner",
                                                   [methods["word"]])
            self.similar = SimilarAcrossSpaces([method.term_vectors for method in inner],
                                               vocabulary)

    async def Similar(self, request: word_pb2.SimilarRequest,  # noqa: N802
                      context: grpc.aio.ServicerContext) -> word_pb2.SimilarResponse:
        if self.similar is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"model {self.model_version} was trained without the word "
                                "method: it has no hashtag vectors to search")
        k = await k_or_abort(request.k, MAX_K, context)
        await limits_or_abort(context, hashtag_problem(request.hashtag))
        hashtag = normalize_hashtag(request.hashtag)
        if hashtag is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"hashtag {quoted(request.hashtag)} has no letters or digits")
        if hashtag not in self.similar:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"hashtag {quoted(hashtag)} is not in the vocabulary")
        return word_pb2.SimilarResponse(
            hashtags=[word_pb2.SimilarHashtag(hashtag=h, similarity=s)
                      for h, s in self.similar.search(hashtag, k)],
            model_version=self.model_version)


async def serve(host: str, port: int, model_dir: Path,
                metrics_port: int | None = None) -> GrpcServer:
    """Starts NOT_SERVING, loads and verifies the word model, then SERVING."""
    server, late = await start_loading(
        SERVICE_NAME, word_pb2_grpc.add_WordEmbeddingServiceServicer_to_server,
        "word model", host, port, metrics_port)
    models = await asyncio.get_running_loop().run_in_executor(
        None, lambda: load_image_models(model_dir, served_methods(model_dir, WORD_METHODS)))
    late.target = server.servicer = WordServicer(models.methods, models.vocabulary,
                                                 models.version)

    async def successor(models: ImageModels, serving: object) -> WordServicer:
        return WordServicer(models.methods, models.vocabulary, models.version, serving)

    server.on_stop(lambda: late.target.stop())
    swap_on_reload(server, late, "word", model_dir, WORD_METHODS, successor)
    await server.set_serving(True)
    log.info("word: model %s, %d hashtags, methods %s", models.version,
             len(models.vocabulary), list(models.methods))
    return server


async def _main() -> None:
    setup_logging()
    server = await serve(os.environ.get("HASHREC_WORD_HOST", "127.0.0.1"),
                         env_port("HASHREC_WORD_PORT", DEFAULT_PORT),
                         resolve_artifact(Path(required_env("HASHREC_MODEL_DIR",
                                                            "the model to serve")), KIND),
                         env_port("HASHREC_WORD_METRICS_PORT", DEFAULT_METRICS_PORT))
    server.stop_on_signals()
    server.reload_on_signal()
    await server.wait()


if __name__ == "__main__":
    run_service(_main, "word")
