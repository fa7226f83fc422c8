"""The gateway's HTTP plumbing, apart from its routes: errors as JSON with the gRPC status
they came from mapped to an HTTP one (RESOURCE_EXHAUSTED with a retry hint → 429 and
Retry-After), the request body limit, and the security headers and metrics on every
response."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

import grpc
import orjson
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram

from shared.admission import retry_after_seconds
from shared.grpc_server import names_an_address

log = logging.getLogger(__name__)

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
                 retry_after: float | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.retry_after, self.headers = retry_after, headers


class FastJSONResponse(JSONResponse):
    """JSON by orjson (in C): the stdlib's encoder was a tenth of the gateway's CPU a
    Recommend (bench/gateway.py under py-spy); the bytes mean the same JSON."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, error: str, message: str, retry_after: float | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error; with ``retry_after``, a Retry-After header in whole seconds (at
    least 1, as HTTP counts them)."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse({"error": error, "message": message}, status_code=status,
                        headers=headers or None)


def from_grpc(error: grpc.aio.AioRpcError) -> ApiError:
    code = error.code()
    status = HTTP_STATUS.get(code, 502)
    message = error.details() or code.name
    retry_after = retry_after_seconds(error)
    if retry_after is not None:  # the recommender at capacity, not a message too large
        return ApiError(429, "RESOURCE_EXHAUSTED", "the recommender is busy; try again in "
                        f"{max(1, math.ceil(retry_after))} s", retry_after)
    if code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED):
        log.error("gateway: the recommender answered %s: %s", code.name, message)
        message = f"the recommender failed ({code.name}); try again in a moment"
    if code == grpc.StatusCode.UNAVAILABLE:
        # what failed where (addresses included) is for the log, not for the client
        log.warning("gateway: the recommender answered UNAVAILABLE: %s", message)
        said = "" if names_an_address(message) else f" ({message})"
        message = f"the recommender cannot answer now{said}; try again in a moment"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = "the recommender did not answer in time; try again in a moment"
    return ApiError(status, code.name, message)


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413: from its Content-Length
    before any of it is read, or as soon as a streamed body passes the limit; and a body
    that has not all arrived ``deadline`` seconds after the headers with 408 (a client
    sending a byte a second would otherwise hold a connection and a worker)."""

    class TooLargeError(Exception):
        pass

    class TooSlowError(Exception):
        pass

    def __init__(self, app, limit: int, overhead: int = 0, deadline: float = 60.0) -> None:
        """``limit``: the upload's; the body may be ``overhead`` bytes larger (framing)."""
        self.app, self.upload_limit, self.limit = app, limit, limit + overhead
        self.deadline = deadline

    async def _refuse(self, send, slow: bool = False) -> None:
        status, error, message = (
            (408, "REQUEST_TIMEOUT", f"the body took over {self.deadline:.0f} s to arrive")
            if slow else (413, "PAYLOAD_TOO_LARGE",
                          f"the upload is over the limit of {self.upload_limit:,} bytes"))
        body = json.dumps({"error": error, "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
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
        received, started, complete = 0, False, False
        ends = asyncio.get_running_loop().time() + self.deadline

        async def limited_receive():
            nonlocal received, complete
            if complete:  # after the body: waiting for a disconnect is no slow body
                return await receive()
            try:
                message = await asyncio.wait_for(
                    receive(), max(0.0, ends - asyncio.get_running_loop().time()))
            except TimeoutError:
                raise BodyLimit.TooSlowError from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
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
        except BodyLimit.TooSlowError:
            if not started:
                await self._refuse(send, slow=True)


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
