"""The gateway's HTTP plumbing, apart from its routes: errors as JSON with the gRPC status
they came from mapped to an HTTP one (RESOURCE_EXHAUSTED with a retry hint → 429 and
Retry-After), the request body limit, and the security headers and metrics on every
response."""

from __future__ import annotations

import json
import math
import time

import grpc
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram

from shared.admission import retry_after_seconds

HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 413, grpc.StatusCode.UNAVAILABLE: 503,
               grpc.StatusCode.DEADLINE_EXCEEDED: 504}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' blob: data:; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}



class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.retry_after = retry_after


def error_response(status: int, error: str, message: str,
           retry_after: float | None = None) -> JSONResponse:
    """The JSON error; with ``retry_after``, a Retry-After header in whole seconds (at
    least 1, as HTTP counts them)."""
    headers = None if retry_after is None else {
        "retry-after": str(max(1, math.ceil(retry_after)))}
    return JSONResponse({"error": error, "message": message}, status_code=status,
                        headers=headers)


def from_grpc(error: grpc.aio.AioRpcError) -> ApiError:
    code = error.code()
    status = HTTP_STATUS.get(code, 502)
    message = error.details() or code.name
    retry_after = retry_after_seconds(error)
    if retry_after is not None:  # the recommender at capacity, not a message too large
        return ApiError(429, "RESOURCE_EXHAUSTED", "the recommender is busy; try again in "
                        f"{max(1, math.ceil(retry_after))} s", retry_after)
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"the recommender cannot answer now ({message}); try again in a moment"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = "the recommender did not answer in time; try again in a moment"
    return ApiError(status, code.name, message)


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413: from its Content-Length
    before any of it is read, or as soon as a streamed body passes the limit."""

    class TooLargeError(Exception):
        pass

    def __init__(self, app, limit: int, overhead: int = 0) -> None:
        """``limit``: the upload's; the body may be ``overhead`` bytes larger (framing)."""
        self.app, self.upload_limit, self.limit = app, limit, limit + overhead

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": "PAYLOAD_TOO_LARGE", "message": "the upload is over "
                           f"the limit of {self.upload_limit:,} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"connection", b"close"),
                                *((k.encode(), v.encode()) for k, v in
                                  SECURITY_HEADERS.items())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyLimit.TooLargeError
            return message

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyLimit.TooLargeError:
            if not started:
                await self._refuse(send)


class HeadersAndMetrics:
    """Adds the security headers to every response and counts and times each request by
    route and status (plain ASGI: no task group between the app and its body)."""

    def __init__(self, app, requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_with_headers(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                    if k.encode() not in names)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - started)
