"""What the gateway holds against abuse, apart from identity: requests from other sites,
rate limits, and clients too slow to be worth a connection.

- ``SameOrigin``: a state-changing request (POST, PUT, PATCH, DELETE) whose Origin is not
  the gateway's own (or one configured for CORS) is refused with 403, and so is one a
  browser marks cross-site (Sec-Fetch-Site). Clients that are not browsers send neither
  header and pass; browsers always send Origin on a cross-site POST.
- ``RateLimits``: per principal and per client address, moving windows from the
  ``limits`` library, kept in Redis when HASHREC_REDIS_URL is set (shared by every
  gateway replica) and in memory otherwise; over the limit is 429 with Retry-After.
- ``SlowClientProtocol`` / ``FastSlowClientProtocol``: uvicorn's HTTP/1.1 protocols (h11,
  httptools) with a deadline for a request's headers (uvicorn has none: a client
  trickling a header a byte a second would hold the connection forever); the body's
  deadline is ``BodyLimit``'s (services/gateway/http.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.gateway.http import SECURITY_HEADERS, ApiError
from shared.cache import redis_password

log = logging.getLogger(__name__)

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
#: the default limits, each "N/second;M/minute" (the limits library's notation)
DEFAULT_LIMITS = {"recommend": "20/second;600/minute", "feedback": "5/second;120/minute",
                  "account": "10/minute;100/hour", "sign-in-name": "5/minute;30/hour"}


class SameOrigin:
    def __init__(self, app, allowed_origins: tuple[str, ...] = ()) -> None:
        self.app, self.allowed = app, {o.rstrip("/") for o in allowed_origins}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin, site = headers.get("origin"), headers.get("sec-fetch-site")
        refused = None
        if origin is not None and origin.rstrip("/") not in self.allowed | {
                _own_origin(scope, headers)}:
            refused = f"a request from {origin!r}: state changes come from this site only"
        elif origin is None and site == "cross-site":
            refused = "a cross-site request: state changes come from this site only"
        if refused is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "FORBIDDEN", "message": refused}).encode()
        await send({"type": "http.response.start", "status": 403, "headers": [
            (b"content-type", b"application/json"),
            *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]})
        await send({"type": "http.response.body", "body": body})


def _own_origin(scope: dict, headers: dict[str, str]) -> str:
    scheme = scope.get("scheme", "http")
    host = headers.get("host", "")
    # the default port is left out of an Origin
    if (scheme, urlsplit(f"//{host}").port) in (("http", 80), ("https", 443)):
        host = host.rsplit(":", 1)[0]
    return f"{scheme}://{host}"


class RateLimits:
    """``await limits.check(kind, *keys)`` raises 429 when any of the keys (a principal,
    an address) is over the kind's limits; ``configured`` False: nothing is limited."""

    def __init__(self, limits: dict[str, str], redis_url: str | None = None) -> None:
        self.limits: dict[str, list[RateLimitItem]] = {
            kind: parse_many(text) for kind, text in limits.items() if text}
        self.configured = bool(self.limits)
        # redis-py's asyncio client (a dependency already), not the library's default;
        # the password from the mounted Secret, never in the URL
        password = redis_password()
        self.storage = storage_from_string(
            "async+" + redis_url, implementation="redispy",
            **({"password": password} if password else {})) \
            if redis_url else storage_from_string("async+memory://")
        self.limiter = MovingWindowRateLimiter(self.storage)

    @classmethod
    def from_text(cls, text: str | None, redis_url: str | None = None) -> RateLimits:
        """HASHREC_GATEWAY_RATE_LIMITS: "off", or kind=limits pairs separated by spaces
        (e.g. "recommend=5/second feedback=1/second") over the defaults."""
        if text is not None and text.strip().lower() == "off":
            return cls({}, redis_url)
        limits = dict(DEFAULT_LIMITS)
        for pair in (text or "").split():
            kind, _, value = pair.partition("=")
            if kind not in limits:
                raise ValueError(f"HASHREC_GATEWAY_RATE_LIMITS: unknown kind {kind!r} "
                                 f"(one of {', '.join(limits)})")
            parse_many(value)  # raises on a malformed limit
            limits[kind] = value
        return cls(limits, redis_url)

    async def check(self, kind: str, *keys: str | None, count: bool = True) -> None:
        """``count`` False: only whether the keys are over already (nothing is spent)."""
        for limit in self.limits.get(kind, ()):
            for key in keys:
                if key is None:
                    continue
                try:
                    allowed = await (self.limiter.hit(limit, kind, key) if count
                                     else self.limiter.test(limit, kind, key))
                except Exception as error:  # the store is down: serve rather than refuse
                    log.error("gateway: rate-limit store unavailable: %s", error)
                    return
                if not allowed:
                    stats = await self.limiter.get_window_stats(limit, kind, key)
                    wait = max(1, math.ceil(stats.reset_time - time.time()))
                    raise ApiError(429, "RESOURCE_EXHAUSTED", f"too many requests ({limit}); "
                                   f"try again in {wait} s", retry_after=wait)


class HeaderDeadline:
    """Closes a connection whose request headers have not all arrived ``header_timeout``
    seconds after it opened or its last response ended (over either of uvicorn's HTTP/1.1
    protocols: both keep ``cycle`` and ``loop``)."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete \
                and self._header_timer is not None:  # the headers are in
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            log.info("gateway: closed a connection whose headers took over %.0f s",
                     self.header_timeout)
            self.transport.close()


class SlowClientProtocol(HeaderDeadline, H11Protocol):
    """h11 (pure Python) with the header deadline; its own limit on a request's unparsed
    bytes (``h11_max_incomplete_event_size``) bounds the headers' size."""


class FastSlowClientProtocol(HeaderDeadline, HttpToolsProtocol):
    """httptools (llhttp, in C: a third of h11's parsing cost) with the header deadline, and
    at most ``max_header_bytes`` of request line and headers (llhttp has no such limit): a
    request past it is answered 400 and its connection closed, as h11 answers one."""

    max_header_bytes = 16 * 1024

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes = getattr(self, "_header_bytes", 0) + size
        if self._header_bytes > self.max_header_bytes:
            # raised inside the parser's callback: httptools turns it into HttpParserError,
            # which uvicorn answers with 400 and a closed connection
            raise ValueError(f"request headers over {self.max_header_bytes} bytes")


#: the gateway's HTTP/1.1 parsers by name (HASHREC_GATEWAY_HTTP): httptools by default
HTTP_PROTOCOLS = {"httptools": FastSlowClientProtocol, "h11": SlowClientProtocol}
