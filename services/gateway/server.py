"""The HTTP gateway and the web page: transport only, a gRPC client of RecommenderService.

    POST /api/recommend   multipart: image (file), user, k → the Recommend answer as JSON
    POST /api/feedback    JSON {user, hashtags, image_sha256} for a photo recommended before,
                          or multipart with the image → the user service's answer
    GET  /api/retrieve    ?hashtag=&user=&k= → photos for a hashtag, each with a URL
    GET  /photos/{id}     a retrieved photo: a recent upload by sha256, or a training photo
                          under HASHREC_PHOTO_ROOT (nothing outside it)
    GET  /                the page (static/: plain HTML, CSS and JS modules, all local)
    GET  /docs            the OpenAPI description (Swagger UI from the swagger-ui-bundle
                          package, served locally); /openapi.json
    GET  /healthz, /readyz, /metrics

Errors are JSON {"error": "<STATUS>", "message": "..."}: gRPC INVALID_ARGUMENT → 400,
NOT_FOUND → 404, RESOURCE_EXHAUSTED with a retry hint (the recommender at capacity) → 429
with Retry-After, other RESOURCE_EXHAUSTED or an upload over the limit → 413 (refused from
its Content-Length, or as soon as the streamed body passes the limit), UNAVAILABLE → 503,
DEADLINE_EXCEEDED → 504. Every response carries a Content-Security-Policy with no inline
script and no frame ancestors, and X-Content-Type-Options: nosniff.

Config from the environment: HASHREC_GATEWAY_HOST (127.0.0.1), HASHREC_GATEWAY_PORT
(8080), HASHREC_RECOMMENDER_TARGET (127.0.0.1:50050), HASHREC_GATEWAY_TIMEOUT_S (30),
HASHREC_GATEWAY_MAX_UPLOAD_BYTES (20 MiB, VisionService's limit), HASHREC_PHOTO_ROOT (the
data root), HASHREC_GATEWAY_UPLOADS (256 photos) and HASHREC_GATEWAY_UPLOAD_BYTES
(256 MiB) for the recent uploads, HASHREC_GATEWAY_EXAMPLE_USERS (comma-separated user ids
the page offers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import grpc
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hashrec.v1 import recommender_pb2, recommender_pb2_grpc, user_pb2
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field

from services.gateway.http import (
    ApiError,
    BodyLimit,
    HeadersAndMetrics,
    error_response,
    from_grpc,
)
from services.gateway.uploads import RecentUploads
from shared.config import data_root, setup_logging
from shared.grpc_server import aio_channel
from shared.tracing import client_interceptors

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
RECOMMENDER = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
FORM_OVERHEAD = 64 * 1024  # the multipart framing and the small fields around the file
PHOTO_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                  ".webp": "image/webp", ".gif": "image/gif"}
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_HASHTAGS = 100
@dataclass
class Settings:
    recommender: str = "127.0.0.1:50050"
    timeout: float = 30.0
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    photo_root: Path = field(default_factory=data_root)
    uploads: int = 256
    upload_bytes: int = 256 * 1024 * 1024
    example_users: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls) -> Settings:
        env = os.environ.get
        return cls(env("HASHREC_RECOMMENDER_TARGET", "127.0.0.1:50050"),
                   float(env("HASHREC_GATEWAY_TIMEOUT_S", "30")),
                   int(env("HASHREC_GATEWAY_MAX_UPLOAD_BYTES", str(MAX_UPLOAD_BYTES))),
                   Path(env("HASHREC_PHOTO_ROOT") or data_root()),
                   int(env("HASHREC_GATEWAY_UPLOADS", "256")),
                   int(env("HASHREC_GATEWAY_UPLOAD_BYTES", str(256 * 1024 * 1024))),
                   tuple(u for u in env("HASHREC_GATEWAY_EXAMPLE_USERS", "").split(",") if u))


class Signal(BaseModel):
    method: str
    score: float
    rank: int


class HashtagAnswer(BaseModel):
    hashtag: str
    score: float
    signals: list[Signal]
    outside_vocabulary: bool = False


class RecommendAnswer(BaseModel):
    hashtags: list[HashtagAnswer]
    model_version: str
    degraded: bool
    degraded_reasons: list[str]
    image_sha256: str


class FeedbackBody(BaseModel):
    user: str = Field(min_length=1, max_length=256)
    hashtags: list[str] = Field(min_length=1, max_length=MAX_HASHTAGS)
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class FeedbackAnswer(BaseModel):
    accepted: list[str]
    ignored: list[str]
    posts: int
    embedding_updated: bool


class RetrievedPhoto(BaseModel):
    photo_id: str
    score: float
    url: str | None


class RetrieveAnswer(BaseModel):
    photos: list[RetrievedPhoto]
    model_version: str


class ErrorBody(BaseModel):
    error: str
    message: str


ERRORS = {status: {"model": ErrorBody} for status in (400, 404, 413, 429, 503, 504)}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_environment()
    registry = CollectorRegistry()
    requests = Counter("hashrec_http_requests", "HTTP requests handled",
                       ["route", "status"], registry=registry)
    latency = Histogram("hashrec_http_seconds", "HTTP handling time", ["route"],
                        registry=registry)
    uploads = RecentUploads(settings.uploads, settings.upload_bytes)
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channel = aio_channel(settings.recommender, client_interceptors())
        state["stub"] = recommender_pb2_grpc.RecommenderServiceStub(channel)
        state["health"] = health_pb2_grpc.HealthStub(channel)
        log.info("gateway: recommender at %s", settings.recommender)
        yield
        await channel.close()

    app = FastAPI(title="hashrec", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Hashtags for a photo, why each was chosen, "
                  "and a profile that learns from the ones you keep.")

    @app.exception_handler(ApiError)
    async def apierror_response(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.error, error.message, error.retry_after)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        def where(location: tuple) -> str:
            return ".".join(str(p) for p in location if p not in ("body", "query")) or "body"

        problems = "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in error.errors())
        return error_response(400, "INVALID_ARGUMENT", problems)

    @app.exception_handler(BodyLimit.TooLargeError)
    async def too_large(request: Request, error: BodyLimit.TooLargeError) -> JSONResponse:
        return error_response(413, "PAYLOAD_TOO_LARGE", f"the upload is over the limit of "
                      f"{settings.max_upload_bytes:,} bytes")

    async def call(method: str, request) -> object:
        try:
            return await getattr(state["stub"], method)(request, timeout=settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise from_grpc(error) from None

    async def image_from_form(form) -> tuple[bytes, str]:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "INVALID_ARGUMENT", "no image: send the photo as the "
                           "'image' file field of a multipart form")
        content_type = (upload.content_type or "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith("image/") \
                and content_type != "application/octet-stream":
            raise ApiError(400, "INVALID_ARGUMENT", f"the upload is {content_type}, not an "
                           "image: choose a photo (JPEG, PNG, WebP, GIF)")
        data = await upload.read()
        if not data:
            raise ApiError(400, "INVALID_ARGUMENT", "the image is empty (0 bytes)")
        return data, content_type or "application/octet-stream"

    async def read_form(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "INVALID_ARGUMENT", "send a multipart/form-data form")
        try:
            return await request.form(max_files=1, max_fields=16)
        except BodyLimit.TooLargeError:
            raise
        except Exception as error:  # a malformed multipart body
            raise ApiError(400, "INVALID_ARGUMENT", f"unreadable form: {error}") from None

    def photo_url(photo_id: str) -> str | None:
        if SHA256.fullmatch(photo_id):
            return f"/photos/{photo_id}" if uploads.get(photo_id) else None
        return f"/photos/{quote(photo_id)}" if _photo_path(settings.photo_root,
                                                           photo_id) else None

    @app.post("/api/recommend", response_model=RecommendAnswer, responses=ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["image"], "properties": {
                          "image": {"type": "string", "format": "binary"},
                          "user": {"type": "string", "description": "the poster, if known"},
                          "k": {"type": "integer", "minimum": 1, "maximum": 100,
                                "default": 10}}}}}}})
    async def recommend(request: Request) -> JSONResponse:
        """Hashtags for the photo, best first, each with the signals behind it."""
        form = await read_form(request)
        data, content_type = await image_from_form(form)
        try:
            k = int(form.get("k") or 10)
        except ValueError:
            raise ApiError(400, "INVALID_ARGUMENT", "k must be a whole number") from None
        user = str(form.get("user") or "").strip()
        reply = await call("Recommend", recommender_pb2.RecommendRequest(
            image=data, user_id=user, k=k))
        digest = uploads.add(data, content_type)
        # RecommendAnswer's shape, as plain JSON: the reply is ours and already checked,
        # and validating it again through the models cost more than the rest of the call
        return JSONResponse({
            "hashtags": [{"hashtag": h.hashtag, "score": h.score,
                          "signals": [{"method": s.method, "score": s.score, "rank": s.rank}
                                      for s in h.signals],
                          "outside_vocabulary": h.outside_vocabulary}
                         for h in reply.hashtags],
            "model_version": reply.model_version, "degraded": reply.degraded,
            "degraded_reasons": list(reply.degraded_reasons), "image_sha256": digest})

    @app.post("/api/feedback", response_model=FeedbackAnswer, responses=ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": FeedbackBody.model_json_schema()},
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["image", "user", "hashtags"],
                      "properties": {"image": {"type": "string", "format": "binary"},
                                     "user": {"type": "string"},
                                     "hashtags": {"type": "string",
                                                  "description": "comma-separated"}}}}}}})
    async def feedback(request: Request) -> FeedbackAnswer:
        """The hashtags a user kept for a photo: their profile learns from them."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await read_form(request)
            data, content_type = await image_from_form(form)
            uploads.add(data, content_type)
            user = str(form.get("user") or "")
            hashtags = [h for h in str(form.get("hashtags") or "").split(",") if h.strip()]
            try:
                body = FeedbackBody(user=user, hashtags=hashtags, image_sha256="0" * 64)
            except ValueError as error:
                raise RequestValidationError(error.errors()) from None
        else:
            try:
                body = FeedbackBody.model_validate_json(await request.body())
            except ValueError as error:
                if hasattr(error, "errors"):
                    raise RequestValidationError(error.errors()) from None
                raise ApiError(400, "INVALID_ARGUMENT", f"unreadable JSON: {error}") from None
            upload = uploads.get(body.image_sha256)
            if upload is None:
                raise ApiError(404, "NOT_FOUND", "that photo is not among the recent uploads "
                               "any more: send it again with the hashtags")
            data = upload.data
        reply = await call("Feedback", recommender_pb2.FeedbackRequest(
            image=data, user_id=body.user.strip(), hashtags=body.hashtags))
        return FeedbackAnswer(accepted=list(reply.accepted), ignored=list(reply.ignored),
                              posts=reply.posts, embedding_updated=reply.embedding_updated)

    @app.get("/api/retrieve", response_model=RetrieveAnswer, responses=ERRORS)
    async def retrieve(hashtag: str = Query(min_length=1, max_length=200),
                       user: str = Query("", max_length=256),
                       k: int = Query(12, ge=1, le=100)) -> RetrieveAnswer:
        """Photos for a hashtag, ranked as the user (if given) would tag them."""
        reply = await call("Retrieve", user_pb2.RetrieveRequest(hashtag=hashtag,
                                                                user_id=user, k=k))
        return RetrieveAnswer(photos=[RetrievedPhoto(photo_id=p.photo_id, score=p.score,
                                                     url=photo_url(p.photo_id))
                                      for p in reply.photos],
                              model_version=reply.model_version)

    @app.get("/photos/{photo_id:path}", include_in_schema=False)
    async def photo(photo_id: str) -> Response:
        if SHA256.fullmatch(photo_id):
            upload = uploads.get(photo_id)
            if upload is not None and upload.content_type.startswith("image/"):
                return Response(upload.data, media_type=upload.content_type)
        else:
            path = _photo_path(settings.photo_root, photo_id)
            if path is not None:
                return FileResponse(path, media_type=PHOTO_SUFFIXES[path.suffix.lower()])
        raise ApiError(404, "NOT_FOUND", "no such photo")

    @app.get("/api/config", include_in_schema=False)
    async def page_config() -> dict:
        return {"max_upload_bytes": settings.max_upload_bytes,
                "example_users": list(settings.example_users)}

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        try:
            reply = await state["health"].Check(
                health_pb2.HealthCheckRequest(service=RECOMMENDER), timeout=2)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            detail = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as error:
            serving, detail = False, f"{error.code().name}: {error.details()}"
        if serving:
            return JSONResponse({"status": "ready"})
        return error_response(503, "UNAVAILABLE", f"the recommender is not serving ({detail})")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    import swagger_ui_bundle

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
              name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.uploads = uploads
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes, overhead=FORM_OVERHEAD)
    app.add_middleware(HeadersAndMetrics, requests=requests, latency=latency)
    return app


def _photo_path(root: Path, photo_id: str) -> Path | None:
    """The training photo ``photo_id`` names under ``root``, or None: nothing outside the
    root (no "..", no absolute path, no link out), and only photo files."""
    if not photo_id or "\x00" in photo_id or photo_id.startswith("/"):
        return None
    try:
        base = root.resolve()
        path = (base / photo_id).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(base) or path.suffix.lower() not in PHOTO_SUFFIXES:
        return None
    return path if path.is_file() else None


async def serve(host: str, port: int, settings: Settings | None = None):
    """A started uvicorn server (``server.should_exit = True`` to stop it gracefully)."""
    import uvicorn

    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=10, lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # the caller owns the signals
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it (a port in use, say)
            raise OSError(f"the gateway could not start on {host}:{port}")
        await asyncio.sleep(0.05)
    server.task = task
    log.info("gateway: http://%s:%d/", host, port)
    return server


def main() -> None:
    import uvicorn

    setup_logging()
    uvicorn.run(create_app(), host=os.environ.get("HASHREC_GATEWAY_HOST", "127.0.0.1"),
                port=int(os.environ.get("HASHREC_GATEWAY_PORT", "8080")),
                timeout_graceful_shutdown=10, log_level="info")


if __name__ == "__main__":
    main()
