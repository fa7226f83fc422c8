"""The HTTP gateway and the web page: transport only, a gRPC client of RecommenderService.

    POST /api/recommend   multipart: image (file), k → the Recommend answer as JSON, for
                          the signed-in person (anonymous: no profile is used)
    POST /api/feedback    signed in: JSON {hashtags, image_sha256, request_id} for a photo
                          recommended before, or multipart with the image → the user
                          service's answer; a repeated request_id is answered once
    GET  /api/retrieve    ?hashtag=&k= → photos for a hashtag, each with a URL: the
                          training photos and the signed-in person's own uploads
    GET  /photos/{id}     a retrieved photo: the caller's own upload by sha256, or a
                          training photo under HASHREC_PHOTO_ROOT (nothing outside it)
    /api/account/…, /api/me…  sign-up, sign-in, sign-out, "my uploads", deleting an upload
                          or everything (services/gateway/me.py)
    GET  /                the page (static/: plain HTML, CSS and JS modules, all local)
    GET  /docs            the OpenAPI description (Swagger UI from the swagger-ui-bundle
                          package, served locally); /openapi.json
    GET  /healthz, /readyz, /metrics

Who is asking is decided by identity (services/gateway/identity.py, HASHREC_AUTH), never
by a form field. Requests from other sites, other Host names, too many requests and slow
clients are refused (services/gateway/guards.py).

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
(256 MiB) for the recent uploads; HASHREC_AUTH (local | oidc | none), HASHREC_ACCOUNTS_DB
(local accounts; default <models>/gateway/accounts.sqlite), HASHREC_SESSION_KEY,
HASHREC_OIDC_ISSUER / _AUDIENCE / _JWKS_URL; HASHREC_GATEWAY_ALLOWED_HOSTS (Host names
served, comma-separated; "*" any), HASHREC_GATEWAY_CORS_ORIGINS (none unless set),
HASHREC_GATEWAY_SECURE_COOKIES (1 behind TLS), HASHREC_GATEWAY_RATE_LIMITS (guards.py),
HASHREC_REDIS_URL (the rate limits' store), HASHREC_GATEWAY_BODY_TIMEOUT_S (60),
HASHREC_GATEWAY_HEADER_TIMEOUT_S (10), HASHREC_GATEWAY_MAX_CONNECTIONS (256),
HASHREC_GATEWAY_HTTP (httptools | h11: the HTTP/1.1 parser).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
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
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from services.gateway.guards import HTTP_PROTOCOLS, RateLimits, SameOrigin
from services.gateway.http import (
    ApiError,
    BodyLimit,
    FastJSONResponse,
    HeadersAndMetrics,
    error_response,
    from_grpc,
)
from services.gateway.me import Gateway, account_routes
from services.gateway.schemas import (
    ERRORS,
    FeedbackAnswer,
    FeedbackBody,
    PageConfig,
    RecommendAnswer,
    RetrieveAnswer,
    RetrievedPhoto,
)
from services.gateway.settings import Settings
from services.gateway.uploads import RecentUploads
from shared.config import env_port, setup_logging
from shared.grpc_server import GcPauses, aio_channel
from shared.images import ImageError, check_header, reencoded
from shared.limits import MAX_COMMUNITY_CHARS
from shared.tracing import client_interceptors

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
RECOMMENDER = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name
FORM_OVERHEAD = 64 * 1024  # the multipart framing and the small fields around the file
PHOTO_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                  ".webp": "image/webp", ".gif": "image/gif"}
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_K = 100
#: how long the page's config waits for the recommender's list of communities
PAGE_CONFIG_TIMEOUT_S = 2.0


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_environment()
    registry = CollectorRegistry()
    requests = Counter("hashrec_http_requests", "HTTP requests handled",
                       ["route", "status"], registry=registry)
    latency = Histogram("hashrec_http_seconds", "HTTP handling time", ["route"],
                        registry=registry)
    collections = GcPauses(registry)
    uploads = RecentUploads(settings.uploads, settings.upload_bytes)
    identity = settings.identity()
    limits = RateLimits.from_text(settings.rate_limits, settings.redis_url)
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channel = aio_channel(settings.recommender, client_interceptors())
        state["stub"] = recommender_pb2_grpc.RecommenderServiceStub(channel)
        state["health"] = health_pb2_grpc.HealthStub(channel)
        log.info("gateway: recommender at %s; sign-in %s", settings.recommender,
                 identity.mode)
        collections.start()
        try:
            yield
        finally:
            collections.stop()
        await channel.close()
        if identity.accounts is not None:
            identity.accounts.close()

    app = FastAPI(title="hashrec", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Hashtags for a photo, why each was chosen, "
                  "and a profile that learns from the ones you keep.")

    @app.exception_handler(ApiError)
    async def apierror_response(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.error, error.message, error.retry_after,
                              error.headers)

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

    @app.exception_handler(BodyLimit.TooSlowError)
    async def too_slow(request: Request, error: BodyLimit.TooSlowError) -> JSONResponse:
        return error_response(408, "REQUEST_TIMEOUT", f"the body took over "
                              f"{settings.body_timeout:.0f} s to arrive")

    async def call(method: str, request) -> object:
        try:
            return await getattr(state["stub"], method)(request, timeout=settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise from_grpc(error) from None

    def client_address(request: Request) -> str | None:
        return request.client.host if request.client else None

    async def image_from_form(form) -> bytes:
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
        try:  # the header alone: a decompression bomb never reaches a decoder
            check_header(data, settings.max_upload_bytes)
        except ImageError as error:
            raise ApiError(400, "INVALID_ARGUMENT", str(error)) from None
        return data

    async def kept(data: bytes) -> tuple[bytes, str]:
        try:
            return await asyncio.to_thread(reencoded, data)
        except (OSError, ValueError, SyntaxError) as error:
            raise ApiError(400, "INVALID_ARGUMENT", f"the image cannot be decoded: "
                           f"{error}") from None

    async def read_form(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send a multipart/form-data form")
        try:
            return await request.form(max_files=1, max_fields=16)
        except (BodyLimit.TooLargeError, BodyLimit.TooSlowError):
            raise
        except Exception as error:  # a malformed multipart body
            raise ApiError(400, "INVALID_ARGUMENT", f"unreadable form: {error}") from None

    def k_from(text: object, default: int) -> int:
        try:
            k = int(str(text)) if text not in (None, "") else default
        except ValueError:
            raise ApiError(400, "INVALID_ARGUMENT", "k must be a whole number") from None
        if not 1 <= k <= MAX_K:
            raise ApiError(400, "INVALID_ARGUMENT", f"k must be between 1 and {MAX_K}")
        return k

    def photo_url(photo_id: str, user: str | None) -> str | None:
        if SHA256.fullmatch(photo_id):
            return f"/photos/{photo_id}" if uploads.get(gateway.owner(user), photo_id) \
                else None
        return f"/photos/{quote(photo_id)}" if _photo_path(settings.photo_root,
                                                           photo_id) else None

    gateway = Gateway(settings, identity, uploads, limits, call, photo_url, client_address)

    @app.post("/api/recommend", response_model=RecommendAnswer, responses=ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["image"], "properties": {
                          "image": {"type": "string", "format": "binary"},
                          "k": {"type": "integer", "minimum": 1, "maximum": MAX_K,
                                "default": 10},
                          "community": {"type": "string", "description": "where the photo "
                                        "is posted, one of /api/config's communities; "
                                        "empty: read from the photo"}}}}}}})
    async def recommend(request: Request) -> JSONResponse:
        """Hashtags for the photo, best first, each with the signals behind it; for the
        signed-in person, their profile speaks too."""
        form = await read_form(request)
        user = await identity.principal(request, str(form.get("user") or ""))
        await limits.check("recommend", user, client_address(request))
        data = await image_from_form(form)
        k = k_from(form.get("k"), 10)
        community = str(form.get("community") or "")
        if len(community) > MAX_COMMUNITY_CHARS:
            raise ApiError(400, "INVALID_ARGUMENT", f"community must be at most "
                           f"{MAX_COMMUNITY_CHARS} characters")
        reply = await call("Recommend", recommender_pb2.RecommendRequest(
            image=data, user_id=user or "", k=k, community=community))
        owner = gateway.owner(user)
        if owner is not None:
            # vision decoded it: keep it, re-encoded, for its owner's "save" and gallery
            kept_data, media_type = await kept(data)
            digest = uploads.add(owner, kept_data, media_type)
        else:
            digest = hashlib.sha256(data).hexdigest()
        # RecommendAnswer's shape, as plain JSON: the reply is ours and already checked,
        # and validating it again through the models cost more than the rest of the call
        return FastJSONResponse({
            "hashtags": [{"hashtag": h.hashtag, "score": h.score,
                          "signals": [{"method": s.method, "score": s.score, "rank": s.rank}
                                      for s in h.signals],
                          "outside_vocabulary": h.outside_vocabulary}
                         for h in reply.hashtags],
            "model_version": reply.model_version, "degraded": reply.degraded,
            "degraded_reasons": list(reply.degraded_reasons), "image_sha256": digest,
            "community_from": reply.community_from,
            "communities": [{"name": c.name, "weight": c.weight} for c in reply.communities]})

    @app.post("/api/feedback", response_model=FeedbackAnswer, responses=ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": FeedbackBody.model_json_schema()},
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["image", "hashtags"],
                      "properties": {"image": {"type": "string", "format": "binary"},
                                     "hashtags": {"type": "string",
                                                  "description": "comma-separated"},
                                     "request_id": {"type": "string"},
                                     "community": {"type": "string"}}}}}}})
    async def feedback(request: Request) -> FeedbackAnswer:
        """The hashtags the signed-in person kept for a photo: their profile learns from
        them. A repeated request_id is answered as the first time, learned from once."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await read_form(request)
            user = await identity.required(request, str(form.get("user") or ""))
            await limits.check("feedback", user, client_address(request))
            hashtags = [h for h in str(form.get("hashtags") or "").split(",") if h.strip()]
            try:
                body = FeedbackBody(hashtags=hashtags, image_sha256="0" * 64,
                                    request_id=str(form.get("request_id") or ""),
                                    community=str(form.get("community") or ""))
            except ValueError as error:
                raise RequestValidationError(error.errors()) from None
            data, media_type = await kept(await image_from_form(form))
        elif content_type.split(";")[0].strip().lower() == "application/json":
            try:
                body = FeedbackBody.model_validate_json(await request.body())
            except ValueError as error:
                if hasattr(error, "errors"):
                    raise RequestValidationError(error.errors()) from None
                raise ApiError(400, "INVALID_ARGUMENT", f"unreadable JSON: {error}") from None
            user = await identity.required(request, body.user)
            await limits.check("feedback", user, client_address(request))
            upload = uploads.get(gateway.owner(user), body.image_sha256)
            if upload is None:
                raise ApiError(404, "NOT_FOUND", "that photo is not among your recent "
                               "uploads any more: send it again with the hashtags")
            data, media_type = upload.data, upload.content_type
        else:
            raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send JSON (application/json) or "
                           "a multipart/form-data form with the image")
        reply = await call("Feedback", recommender_pb2.FeedbackRequest(
            image=data, user_id=user, hashtags=body.hashtags, request_id=body.request_id,
            community=body.community))
        uploads.add(gateway.owner(user), data, media_type)  # kept once the profile took it
        return FeedbackAnswer(accepted=list(reply.accepted), ignored=list(reply.ignored),
                              posts=reply.posts, embedding_updated=reply.embedding_updated)

    @app.get("/api/retrieve", response_model=RetrieveAnswer, responses=ERRORS)
    async def retrieve(request: Request, hashtag: str = Query(min_length=1, max_length=200),
                       k: int = Query(12, ge=1, le=MAX_K),
                       user: str = Query("", max_length=256,
                                         description="read with HASHREC_AUTH=none only"),
                       ) -> RetrieveAnswer:
        """Photos for a hashtag: the training photos and your own uploads, ranked as you
        would tag them when you are signed in."""
        principal = await identity.principal(request, user)
        await limits.check("recommend", principal, client_address(request))
        reply = await call("Retrieve", user_pb2.RetrieveRequest(
            hashtag=hashtag, user_id=principal or "", k=k))
        return RetrieveAnswer(photos=[RetrievedPhoto(photo_id=p.photo_id, score=p.score,
                                                     url=photo_url(p.photo_id, principal))
                                      for p in reply.photos],
                              model_version=reply.model_version)

    @app.get("/photos/{photo_id:path}", include_in_schema=False)
    async def photo(request: Request, photo_id: str) -> Response:
        if SHA256.fullmatch(photo_id):
            upload = uploads.get(gateway.owner(await identity.principal(request)), photo_id)
            if upload is not None:
                return Response(upload.data, media_type=upload.content_type,
                                headers={"cache-control": "private, max-age=3600"})
        else:
            path = _photo_path(settings.photo_root, photo_id)
            if path is not None:
                return FileResponse(path, media_type=PHOTO_SUFFIXES[path.suffix.lower()])
        raise ApiError(404, "NOT_FOUND", "no such photo")

    @app.get("/api/config", response_model=PageConfig)
    async def page_config() -> dict:
        """What the page offers: the upload limit, the sign-in mode, and the communities a
        photo can be posted to (none while the recommender does not answer)."""
        try:  # briefly: the page waits for this, and it still works without the list
            communities = list((await state["stub"].Communities(
                recommender_pb2.CommunitiesRequest(), timeout=PAGE_CONFIG_TIMEOUT_S)).names)
        except grpc.aio.AioRpcError as error:
            log.warning("gateway: communities: %s", error.code().name)
            communities = []
        return {"max_upload_bytes": settings.max_upload_bytes, "auth": identity.mode,
                "communities": communities if len(communities) > 1 else []}

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
            log.warning("gateway: readiness: %s: %s", error.code().name, error.details())
            serving, detail = False, error.code().name
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

    app.include_router(account_routes(gateway))
    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
              name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.uploads = uploads
    app.state.identity = identity
    # Outermost last: metrics and headers see every answer, the host and origin checks
    # run before anything reads a body.
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes, overhead=FORM_OVERHEAD,
                       deadline=settings.body_timeout)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_credentials=True, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(SameOrigin, allowed_origins=settings.cors_origins)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
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


def uvicorn_config(app: FastAPI, host: str, port: int, settings: Settings,
                   log_level: str = "warning"):
    """uvicorn as the gateway runs it: bounded connections, a deadline for headers (the
    body's is BodyLimit's), short keep-alive."""
    import uvicorn

    protocol = type("GatewayProtocol", (HTTP_PROTOCOLS[settings.http_parser],),
                    {"header_timeout": settings.header_timeout})
    # uvloop: the event loop in C (a dependency), the gateway's other half of per-request
    # overhead after the HTTP parser
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          loop="uvloop",
                          timeout_graceful_shutdown=10, lifespan="on", timeout_keep_alive=5,
                          limit_concurrency=settings.max_connections,
                          h11_max_incomplete_event_size=16 * 1024)


async def serve(host: str, port: int, settings: Settings | None = None):
    """A started uvicorn server (``server.should_exit = True`` to stop it gracefully)."""
    import uvicorn

    settings = settings or Settings.from_environment()
    server = uvicorn.Server(uvicorn_config(create_app(settings), host, port, settings))
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
    try:  # an operator's configuration mistake is one line and exit 2, not a traceback
        settings = Settings.from_environment()
        app = create_app(settings)
        port = env_port("HASHREC_GATEWAY_PORT", "8080")
    except ValueError as error:
        print(f"gateway: {error}", file=sys.stderr)
        sys.exit(2)
    config = uvicorn_config(app, os.environ.get("HASHREC_GATEWAY_HOST", "127.0.0.1"), port,
                            settings, log_level="info")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
