"""The feature cache against a real redis-server, and the in-process LRU."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import numpy as np
import pytest

from shared.cache import LruCache, RedisCache, cache_key, decode_array, encode_array, make_cache
from tests.servers import RedisServer


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is missing: apt-get install redis-server")
    server = RedisServer()
    server.start()
    yield server
    server.kill()


def test_arrays_round_trip_without_pickle() -> None:
    for array in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([], np.int64),
                  np.ones((2, 2, 2), np.float16)):
        back = decode_array(encode_array(array))
        assert back.dtype == array.dtype and np.array_equal(back, array)
    with pytest.raises(TypeError, match="pickle"):
        encode_array(np.array([object()]))


def test_keys_carry_kind_and_model_version() -> None:
    assert cache_key("features", "effnet-1", "ab12") == "hashrec:features:effnet-1:ab12"
    assert cache_key("features", "effnet-2", "ab12") != cache_key("features", "effnet-1",
                                                                  "ab12")
    with pytest.raises(ValueError, match="unknown cache kind"):
        cache_key("pictures", "v", "x")
    with pytest.raises(ValueError, match="model version and an item id"):
        cache_key("features", "", "x")


def test_redis_cache_stores_and_expires(redis_server: RedisServer) -> None:
    cache = RedisCache(redis_server.url)
    value = np.random.default_rng(0).normal(size=1280).astype(np.float32)
    cache.set("hashrec:features:v1:a", value)
    assert np.array_equal(cache.get("hashrec:features:v1:a"), value)
    assert cache.get("hashrec:features:v2:a") is None  # another model version: a miss
    cache.set("hashrec:features:v1:short", value, ttl=0.2)
    time.sleep(0.4)
    assert cache.get("hashrec:features:v1:short") is None


def test_redis_outage_is_a_miss_not_an_error_and_recovery_follows(
        redis_server: RedisServer) -> None:
    cache = RedisCache(redis_server.url, retry_after=0.5)
    value = np.ones(4, np.float32)
    cache.set("hashrec:features:v1:x", value)
    redis_server.kill()
    started = time.monotonic()
    assert cache.get("hashrec:features:v1:x") is None  # Redis gone: a miss
    cache.set("hashrec:features:v1:y", value)  # dropped, no exception
    assert cache.get("hashrec:features:v1:x") is None  # circuit open: not even asked
    assert time.monotonic() - started < 0.5 and cache.failures == 1
    redis_server.start()  # back (empty: the test's server keeps nothing on disk)
    time.sleep(0.6)  # the circuit closes after retry_after
    cache.set("hashrec:features:v1:x", value)
    assert np.array_equal(cache.get("hashrec:features:v1:x"), value)


def test_lru_evicts_the_least_recently_used_and_honours_ttl() -> None:
    cache = LruCache(max_entries=2)
    cache.set("a", np.zeros(1))
    cache.set("b", np.ones(1))
    assert cache.get("a") is not None  # a is now the most recent
    cache.set("c", np.full(1, 2.0))
    assert cache.get("b") is None and cache.get("a") is not None
    cache.set("t", np.zeros(1), ttl=0.05)
    time.sleep(0.1)
    assert cache.get("t") is None


def test_without_a_redis_url_the_cache_is_in_process() -> None:
    assert isinstance(make_cache(None), LruCache)
    assert isinstance(make_cache("redis://127.0.0.1:1/0"), RedisCache)


def test_a_redis_with_a_password_serves_the_cache_given_it_and_refuses_without(
        monkeypatch, tmp_path) -> None:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is missing: apt-get install redis-server")
    server = RedisServer(password="s3cret-from-a-secret")
    server.start()
    try:
        monkeypatch.setenv("HASHREC_REDIS_PASSWORD", "s3cret-from-a-secret")
        value = np.arange(3, dtype=np.float32)
        with_password = make_cache(server.url)
        with_password.set("k", value)
        np.testing.assert_array_equal(with_password.get("k"), value)
        monkeypatch.delenv("HASHREC_REDIS_PASSWORD")
        secret = tmp_path / "password"  # as a Secret mounted as a file
        secret.write_text("s3cret-from-a-secret\n")
        monkeypatch.setenv("HASHREC_REDIS_PASSWORD_FILE", str(secret))
        from_file = make_cache(server.url)
        np.testing.assert_array_equal(from_file.get("k"), value)
        monkeypatch.delenv("HASHREC_REDIS_PASSWORD_FILE")
        without = make_cache(server.url)
        without.set("k2", value)  # refused by Redis: a miss, never an error
        assert without.get("k") is None and without.get("k2") is None
    finally:
        server.kill()
