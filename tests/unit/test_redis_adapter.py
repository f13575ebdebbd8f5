"""The Redis adapter's translation, without a server: error classes, kwargs splitting,
error classification, lazy export."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import redis
from redis import exceptions as redis_exc

from sqlalchemy_smartpool import errors
from sqlalchemy_smartpool.config import MAX_SECONDS
from sqlalchemy_smartpool.redis_errors import (
    REDIS_ERRORS,
    RedisCircuitOpenError,
    RedisPoolClosed,
    RedisPoolTimeout,
    RedisTooManyWaiters,
)
from sqlalchemy_smartpool.redis_pool import (
    SmartRedisPool,
    _is_permanent,
    _is_transient,
    _parse_maxclients,
    split_kwargs,
)


def test_error_classes_are_redis_connection_errors_and_neutral() -> None:
    assert issubclass(RedisPoolTimeout, redis_exc.ConnectionError)
    assert issubclass(RedisPoolTimeout, errors.AcquireTimeout)
    assert issubclass(RedisTooManyWaiters, RedisPoolTimeout)
    assert issubclass(RedisTooManyWaiters, errors.WaitQueueFull)
    assert issubclass(RedisPoolClosed, redis_exc.ConnectionError)
    assert issubclass(RedisPoolClosed, errors.PoolClosedError)
    err = RedisCircuitOpenError("down", 0.5, OSError("refused"))
    assert isinstance(err, redis_exc.ConnectionError) and isinstance(err, errors.CircuitOpen)
    assert str(err) == "down" and err.retry_after == 0.5 and isinstance(err.orig, OSError)
    assert isinstance(RedisCircuitOpenError("x", 1.0).orig, errors.DatabaseUnavailable)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RedisCircuitOpenError and again.retry_after == 0.5
    assert REDIS_ERRORS.timeout is RedisPoolTimeout and REDIS_ERRORS.circuit_open is RedisCircuitOpenError


def test_split_kwargs_separates_pool_settings() -> None:
    config, conn = split_kwargs(
        {"host": "h", "port": 1, "db": 3, "min_size": 1, "max_size": 7, "breaker_failure_threshold": 9}
    )
    assert (config.min_size, config.max_size, config.breaker.failure_threshold) == (1, 7, 9)
    assert conn == {"host": "h", "port": 1, "db": 3, "socket_connect_timeout": config.connect_timeout}


def test_split_kwargs_redis_spellings() -> None:
    config, conn = split_kwargs({"max_connections": 12, "timeout": 3, "queue_class": object})
    assert config.max_size == 12 and config.acquire_timeout == 3 and "queue_class" not in conn
    config, _ = split_kwargs({"timeout": None})
    assert config.acquire_timeout == MAX_SECONDS
    config, _ = split_kwargs({"max_connections": None})
    assert config.max_size == 100
    with pytest.raises(errors.ConfigError, match="conflicts"):
        split_kwargs({"max_connections": 12, "max_size": 13})
    config, _ = split_kwargs({"max_connections": 12, "max_size": 12})
    assert config.max_size == 12


def test_split_kwargs_keeps_given_socket_timeouts_and_url_query() -> None:
    _, conn = split_kwargs({"socket_timeout": 2})
    assert "socket_connect_timeout" not in conn
    config, conn = split_kwargs({"connect_timeout": None})
    assert "socket_connect_timeout" not in conn and config.connect_timeout is None
    config, _ = split_kwargs({"max_size": 4}, url_query={"smartpool_max_size": "9"})
    assert config.max_size == 9  # the URL is the operator's knob


def test_unsupported_features_are_refused() -> None:
    from redis.maint_notifications import MaintNotificationsConfig

    with pytest.raises(errors.ConfigError, match="maintenance notifications"):
        split_kwargs({"maint_notifications_config": MaintNotificationsConfig(enabled=True)})
    _, conn = split_kwargs({"maint_notifications_config": MaintNotificationsConfig(enabled=False)})
    assert "maint_notifications_config" not in conn
    with pytest.raises(errors.ConfigError, match="cache_config"):
        split_kwargs({"cache_config": object()})


def test_bad_connection_keyword_fails_at_construction() -> None:
    with pytest.raises(TypeError):
        SmartRedisPool(host="127.0.0.1", no_such_option=1)
    with pytest.raises(errors.ConfigError):
        SmartRedisPool(max_size=0)


def test_from_url_parses_like_redis_py() -> None:
    pool = SmartRedisPool.from_url("redis://u:pw@example.invalid:6390/4?smartpool_min_size=0&max_size=1")
    try:
        kw = pool.connection_kwargs
        assert (kw["host"], kw["port"], kw["db"], kw["username"], kw["password"]) == (
            "example.invalid",
            6390,
            4,
            "u",
            "pw",
        )
        assert pool.config.min_size == 0 and pool.config.max_size == 1
        assert "max_size" not in kw
        assert "pw" not in repr(pool)
    finally:
        pool.close()
    with pytest.raises(errors.ConfigError):
        SmartRedisPool.from_url("redis://h/0?smartpool_max_sise=3")


def test_classification() -> None:
    assert _is_transient(redis_exc.ConnectionError("refused"))
    assert _is_transient(redis_exc.TimeoutError("slow"))
    assert _is_transient(ConnectionRefusedError())
    assert _is_transient(redis_exc.BusyLoadingError("loading"))
    assert not _is_transient(redis_exc.AuthenticationError("bad"))
    assert _is_permanent(redis_exc.AuthenticationError("invalid username-password pair"))
    assert _is_permanent(redis_exc.AuthorizationError("no"))
    assert _is_permanent(redis_exc.ResponseError("ERR DB index is out of range"))
    assert _is_permanent(redis_exc.ResponseError("WRONGPASS invalid username-password pair"))
    assert _is_permanent(redis_exc.NoPermissionError("NOPERM"))
    assert not _is_permanent(redis_exc.ConnectionError("refused"))
    assert not _is_permanent(redis_exc.ResponseError("ERR something else"))


def test_maxclients_reply_in_both_protocols() -> None:
    assert _parse_maxclients([b"maxclients", b"10000"]) == 10000
    assert _parse_maxclients({b"maxclients": b"64"}) == 64
    assert _parse_maxclients([]) is None and _parse_maxclients(None) is None
    assert _parse_maxclients([b"maxclients", b"x"]) is None


def test_pool_api_without_a_server() -> None:
    pool = SmartRedisPool(host="127.0.0.1", port=1, protocol=3, decode_responses=True, max_size=2)
    try:
        assert pool.get_protocol() == 3 and pool.max_connections == 2
        assert pool.get_encoder().decode_responses is True
        assert pool.get_connection_count() == [(0, {"state": "idle"}), (0, {"state": "used"})]
        assert not pool.maint_notifications_enabled() and pool.cache is None
        assert not pool.owns_connection(redis.Connection())
        pool.release(redis.Connection())  # not ours: ignored, as redis-py does
    finally:
        pool.close()


def test_import_does_not_import_redis() -> None:
    code = (
        "import sys, sqlalchemy_smartpool as s; assert 'redis' not in sys.modules; "
        "s.SmartRedisPool; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
