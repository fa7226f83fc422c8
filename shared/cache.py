"""Caching what is costly to recompute: a photo's features (vision, by the sha256 of its
bytes) and the photo methods' hashtag scores for it (the recommender).

Keys are ``hashrec:{kind}:{model_version}:{id}``, so a new model never reads an old
entry. Values are numpy arrays stored as a small JSON header (dtype, shape) and the raw
bytes: no pickle, ever. Two stores behind one interface:

- ``RedisCache`` (redis-py) with short socket timeouts and TTLs. Redis is an optimisation,
  never a dependency: any Redis error counts as a miss (get) or is dropped (set), is logged,
  and opens a circuit for ``retry_after`` seconds during which Redis is not asked at all,
  so an outage costs no request its deadline.
- ``LruCache``: in-process, bounded, for the embedded single-machine mode (no Redis URL).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("features", "photo_scores", "answer")


def cache_key(kind: str, model_version: str, item: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; known: {', '.join(KINDS)}")
    if not model_version or not item:
        raise ValueError("a cache key needs a model version and an item id")
    return f"hashrec:{kind}:{model_version}:{item}"


def encode_array(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise TypeError("object arrays cannot be cached (they would need pickle)")
    header = json.dumps({"dtype": array.dtype.str, "shape": array.shape}).encode()
    return len(header).to_bytes(4, "big") + header + array.tobytes()


def decode_array(blob: bytes) -> np.ndarray:
    size = int.from_bytes(blob[:4], "big")
    header = json.loads(blob[4:4 + size])
    dtype = np.dtype(header["dtype"])
    if dtype.hasobject:
        raise ValueError("cached value claims an object dtype")
    return np.frombuffer(blob[4 + size:], dtype=dtype).reshape(header["shape"])


class Cache(Protocol):
    def get(self, key: str) -> np.ndarray | None: ...

    def set(self, key: str, value: np.ndarray, ttl: float | None = None) -> None: ...


class LruCache:
    """Bounded in-process cache; least recently used entries go first; TTLs honoured."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, value = entry
            if expires < time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: np.ndarray, ttl: float | None = None) -> None:
        expires = time.monotonic() + ttl if ttl else float("inf")
        with self._lock:
            self._entries[key] = (expires, np.array(value, copy=True))
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class RedisCache:
    def __init__(self, url: str, default_ttl: float = 24 * 3600, timeout: float = 0.05,
                 retry_after: float = 5.0, password: str | None = None) -> None:
        """``password``: Redis AUTH (kept out of the URL, which config and logs show)."""
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=timeout,
                                            socket_connect_timeout=timeout,
                                            **({"password": password} if password else {}))
        self._errors = (redis.RedisError, OSError)
        self.default_ttl = default_ttl
        self.retry_after = retry_after
        self._closed_until = 0.0  # the circuit: Redis is skipped until this time
        self.failures = 0

    def _available(self) -> bool:
        return time.monotonic() >= self._closed_until

    def _failed(self, operation: str, error: Exception) -> None:
        self.failures += 1
        self._closed_until = time.monotonic() + self.retry_after
        log.warning("redis %s failed (%s); serving without the cache for %.0f s",
                    operation, error, self.retry_after)

    def get(self, key: str) -> np.ndarray | None:
        if not self._available():
            return None
        try:
            blob = self._client.get(key)
        except self._errors as error:
            self._failed("get", error)
            return None
        return None if blob is None else decode_array(blob)

    def set(self, key: str, value: np.ndarray, ttl: float | None = None) -> None:
        if not self._available():
            return
        try:
            self._client.set(key, encode_array(value), px=int(1000 * (ttl or self.default_ttl)))
        except self._errors as error:
            self._failed("set", error)


def make_cache(redis_url: str | None) -> Cache:
    """Redis when a URL is configured (HASHREC_REDIS_URL; its password, if any, in the file
    HASHREC_REDIS_PASSWORD_FILE names (a mounted Secret) or in HASHREC_REDIS_PASSWORD),
    else the in-process LRU."""
    if not redis_url:
        return LruCache()
    return RedisCache(redis_url, password=redis_password())


def redis_password() -> str | None:
    """Redis AUTH: the file HASHREC_REDIS_PASSWORD_FILE names (a mounted Secret), else
    HASHREC_REDIS_PASSWORD, else none."""
    password = os.environ.get("HASHREC_REDIS_PASSWORD")
    password_file = os.environ.get("HASHREC_REDIS_PASSWORD_FILE")
    if password_file:
        password = Path(password_file).read_text().strip()
    return password or None
