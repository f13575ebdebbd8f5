"""SmartRedisPool against the real Redis on 127.0.0.1:6379 (shared: db 15, our own
key prefix and client names, only our own clients are ever killed) and, for
outages, against a redis-server each test starts and stops itself.

After every test the connections the server sees under the test's client
name equal what the pool counts: nothing leaked, nothing lost.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from sqlalchemy_smartpool import SmartRedisPool
from sqlalchemy_smartpool.errors import AcquireTimeout, CircuitOpen, PoolClosedError
from sqlalchemy_smartpool.redis_errors import RedisCircuitOpenError, RedisPoolClosed, RedisPoolTimeout
from sqlalchemy_smartpool.testing import FaultMode, FaultProxy

from ._services import HOST, REDIS_PORT, require_redis
from .conftest import wait_until

pytestmark = pytest.mark.integration

DB = 15


def admin() -> redis.Redis:
    return redis.Redis(host=HOST, port=REDIS_PORT, db=DB, decode_responses=True)


def clients_named(name: str, port: int = REDIS_PORT) -> list[dict[str, Any]]:
    r = redis.Redis(host=HOST, port=port, decode_responses=True)
    try:
        return [c for c in r.client_list() if c.get("name") == name]
    finally:
        r.close()


@pytest.fixture
def name() -> str:
    return f"sp-it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_pool(name: str) -> Iterator[Callable[..., SmartRedisPool]]:
    require_redis()
    pools: list[SmartRedisPool] = []

    def make(**kw: Any) -> SmartRedisPool:
        kw.setdefault("host", HOST)
        kw.setdefault("port", REDIS_PORT)
        kw.setdefault("db", DB)
        kw.setdefault("client_name", name)
        kw.setdefault("acquire_timeout", 5.0)
        pool = SmartRedisPool(**kw)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        if pool.pid != os.getpid():
            continue
        port = pool.connection_kwargs.get("port", REDIS_PORT)
        if port == REDIS_PORT and not pool._engine.core.closed:
            # what the server sees is what the pool counts (closes are asynchronous)
            assert wait_until(lambda p=pool: len(clients_named(name)) == p.size(), 5.0), (
                f"server sees {len(clients_named(name))} clients, pool counts {pool.size()}"
            )
        pool.close()
    r = admin()
    try:
        keys = list(r.scan_iter(f"{name}:*"))
        if keys:
            r.delete(*keys)
        if not any(p.connection_kwargs.get("port", REDIS_PORT) != REDIS_PORT for p in pools):
            assert wait_until(lambda: not clients_named(name), 5.0), "connections left after close()"
    finally:
        r.close()


def test_commands_client_name_and_db(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    pool = make_pool(min_size=2, max_size=4)
    r = redis.Redis(connection_pool=pool)
    assert r.set(f"{name}:k", "v") is True
    assert r.get(f"{name}:k") == b"v"
    assert admin().get(f"{name}:k") == "v"  # db 15, seen from another client
    pool.wait(5)
    assert pool.size() == 2
    seen = clients_named(name)
    assert len(seen) == 2 and all(int(c["db"]) == DB for c in seen)
    s = pool.stats()
    assert s.pool_max == 4 and s.server_max_connections is not None and s.server_max_connections > 0


def test_from_url_with_pool_settings(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    url = f"redis://{HOST}:{REDIS_PORT}/{DB}?client_name={name}&smartpool_max_size=3&decode_responses=True"
    pool = SmartRedisPool.from_url(url, min_size=1)
    try:
        assert pool.config.max_size == 3 and pool.config.min_size == 1
        assert pool.connection_kwargs["db"] == DB
        r = redis.Redis(connection_pool=pool)
        r.set(f"{name}:u", "x")
        assert r.get(f"{name}:u") == "x"
        assert {int(c["db"]) for c in clients_named(name)} == {DB}
    finally:
        pool.close()
        admin().delete(f"{name}:u")
    assert wait_until(lambda: not clients_named(name), 5.0)


def test_repr_hides_password() -> None:
    pool = SmartRedisPool(host=HOST, port=REDIS_PORT, password="s3cret", username="bob")
    try:
        text = repr(pool)
        assert "s3cret" not in text and "bob" not in text and "<REDACTED>" in text
    finally:
        pool.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_resp2_and_resp3(make_pool: Callable[..., SmartRedisPool], name: str, protocol: int) -> None:
    pool = make_pool(protocol=protocol, decode_responses=True, max_size=2)
    r = redis.Redis(connection_pool=pool)
    r.hset(f"{name}:h", mapping={"a": "1", "b": "2"})
    assert r.hgetall(f"{name}:h") == {"a": "1", "b": "2"}
    assert r.ping() is True
    info = r.client_info()
    assert int(info["resp"]) == protocol and info["name"] == name
    assert pool._engine.server_limit is not None  # CONFIG GET parsed in both protocols


def test_pipeline_and_multi_exec(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    pool = make_pool(max_size=2)
    r = redis.Redis(connection_pool=pool)
    with r.pipeline(transaction=True) as p:
        p.set(f"{name}:a", 1).incr(f"{name}:a").get(f"{name}:a")
        assert p.execute() == [True, 2, b"2"]
    with r.pipeline(transaction=False) as p:
        for i in range(50):
            p.rpush(f"{name}:l", i)
        assert p.execute()[-1] == 50
    # a failing command inside MULTI: the error comes back, the connection is clean after
    with r.pipeline() as p:
        p.set(f"{name}:s", "x").lpush(f"{name}:s", 1)
        with pytest.raises(redis.ResponseError):
            p.execute()
    assert r.get(f"{name}:s") == b"x"
    assert pool.stats().pool_in_use == 0


def test_watch_holds_the_connection_until_reset(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    pool = make_pool(max_size=1, acquire_timeout=0.3)
    r = redis.Redis(connection_pool=pool)
    p = r.pipeline()
    p.watch(f"{name}:w")
    assert pool.stats().pool_in_use == 1
    with pytest.raises(RedisPoolTimeout):  # the only connection is the watcher's
        r.get(f"{name}:x")
    admin().set(f"{name}:w", "changed")  # another client touches the watched key
    p.multi()
    p.set(f"{name}:w", "mine")
    with pytest.raises(redis.WatchError):
        p.execute()
    p.reset()
    assert pool.stats().pool_in_use == 0
    assert r.get(f"{name}:w") == b"changed"


def test_pubsub_connection_is_never_shared(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    pool = make_pool(min_size=1, max_size=6, decode_responses=True)
    r = redis.Redis(connection_pool=pool)
    channel = f"{name}:chan"
    ps = r.pubsub()
    ps.subscribe(channel)
    assert ps.get_message(timeout=2)["type"] == "subscribe"
    stop = threading.Event()
    bad: list[str] = []
    counts = [0] * 4

    def worker(i: int) -> None:
        key = f"{name}:w{i}"
        while not stop.is_set():
            n = counts[i]
            got = r.set(key, n) and r.get(key)
            if got != str(n):  # a pubsub message instead of the reply would show here
                bad.append(f"worker {i}: {got!r}")
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    received = []
    publisher = admin()
    for i in range(200):
        publisher.publish(channel, f"m{i}")
    deadline = time.monotonic() + 10
    while len(received) < 200 and time.monotonic() < deadline:
        msg = ps.get_message(timeout=1)
        if msg is not None:
            received.append(msg)
    stop.set()
    for t in threads:
        t.join(10)
    assert not bad
    assert [m["data"] for m in received] == [f"m{i}" for i in range(200)]
    assert all(m["type"] == "message" for m in received)
    assert min(counts) > 0
    ps.close()  # released: unread confirmations mean it is replaced, not reused dirty
    assert r.set(f"{name}:after", 1) and r.get(f"{name}:after") == "1"


def test_dirty_connection_is_not_reused(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    pool = make_pool(max_size=1)
    conn = pool.get_connection()
    conn.send_command("SET", f"{name}:d", "1")  # reply never read
    assert wait_until(lambda: conn.can_read(), 2.0)
    pool.release(conn)
    assert pool.stats().counters["connections_invalidated"] == 1
    r = redis.Redis(connection_pool=pool)
    assert r.get(f"{name}:d") == b"1"  # a fresh connection, whose reply is its own
    again = pool.get_connection()
    assert again is not conn
    pool.release(again)
    pool.release(conn)  # released twice: ignored
    assert pool.stats().pool_in_use == 0 and pool.size() == 1


def test_release_interrupted_while_looking_loses_no_slot(
    make_pool: Callable[..., SmartRedisPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt during release's look at the connection: the slot still goes
    back (the sync pool used to lose it; the async one already gave it back)."""
    pool = make_pool(max_size=1, acquire_timeout=1.0)
    conn = pool.get_connection()
    backend = pool._engine.backend

    def interrupted(c: Any) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "reusable", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.release(conn)
    monkeypatch.undo()
    assert pool.stats().pool_in_use == 0
    assert redis.Redis(connection_pool=pool).ping() is True  # the one slot serves again


def test_blocking_command_longer_than_validation_interval(
    make_pool: Callable[..., SmartRedisPool], name: str
) -> None:
    # connect_timeout bounds the handshake only: the blocking commands below outlast it
    pool = make_pool(
        max_size=2,
        validation_interval=0.1,
        keepalive_interval=0.2,
        housekeeping_interval=0.05,
        connect_timeout=0.3,
    )
    r = redis.Redis(connection_pool=pool)
    assert r.ping()  # a release looked at the socket (redis-py's timeout-0 read)
    t0 = time.monotonic()
    assert r.blpop([f"{name}:empty"], timeout=1) is None
    assert time.monotonic() - t0 >= 0.9
    pusher = threading.Timer(0.5, lambda: admin().rpush(f"{name}:q", "x"))
    pusher.start()
    assert r.blpop([f"{name}:q"], timeout=3) == (f"{name}:q".encode(), b"x")
    pusher.join()
    assert r.ping()
    assert pool.stats().counters["validations_failed"] == 0


def test_timeout_is_a_redis_connection_error(make_pool: Callable[..., SmartRedisPool]) -> None:
    pool = make_pool(max_size=1, acquire_timeout=0.2)
    held = pool.get_connection()
    try:
        with pytest.raises(redis.ConnectionError) as info:
            redis.Redis(connection_pool=pool).ping()
        assert isinstance(info.value, AcquireTimeout)
    finally:
        pool.release(held)


def test_close_is_final_and_disconnect_is_not(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    pool = make_pool(min_size=2, max_size=3)
    r = redis.Redis(connection_pool=pool)
    pool.wait(5)
    held = pool.get_connection()
    pool.disconnect()  # as redis-py: every connection, the one in use too
    assert not held.is_connected
    pool.release(held)  # replaced, not reused
    assert r.ping()
    assert wait_until(lambda: len(clients_named(name)) == pool.size(), 5)
    pool.close()
    with pytest.raises(redis.ConnectionError) as info:
        r.ping()
    assert isinstance(info.value, PoolClosedError) and isinstance(info.value, RedisPoolClosed)
    assert wait_until(lambda: not clients_named(name), 5)


def test_client_kill_under_load(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    """16 threads; our own clients are killed by id twice: only commands in flight fail."""
    pool = make_pool(min_size=4, max_size=8, validation_interval=0.05)
    pool.wait(5)
    r = redis.Redis(connection_pool=pool)
    stop = threading.Event()
    failures: list[BaseException] = []
    done = [0]
    lock = threading.Lock()

    def worker(i: int) -> None:
        while not stop.is_set():
            try:
                r.incr(f"{name}:n")
                with lock:
                    done[0] += 1
            except redis.ConnectionError as err:
                with lock:
                    failures.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    killer = admin()
    killed = 0
    for _ in range(2):
        assert wait_until(lambda: done[0] > 200, 10)
        ids = [c["id"] for c in clients_named(name)]
        assert 0 < len(ids) <= 8
        for cid in ids:
            killed += killer.client_kill_filter(_id=cid)
        base = done[0]
        assert wait_until(lambda b=base: done[0] > b + 200, 10), "no recovery after CLIENT KILL"
    stop.set()
    for t in threads:
        t.join(10)
    # at most one failure per connection that was killed while a command was in flight
    print(f"CLIENT KILL: {killed} killed, {len(failures)} commands failed, {done[0]} succeeded")
    assert len(failures) <= killed, (len(failures), killed)
    # a killed INCR may have been applied before its reply was lost
    assert done[0] <= int(killer.get(f"{name}:n")) <= done[0] + len(failures)


def test_fork_child_gets_its_own_connections(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    pool = make_pool(min_size=2, max_size=4)
    r = redis.Redis(connection_pool=pool)
    pool.wait(5)
    r.set(f"{name}:parent", "p")
    before = {c["id"] for c in clients_named(name)}
    pid = os.fork()
    if pid == 0:  # the child: uses the pool, then exits without closing anything of the parent
        code = 1
        try:
            rc = redis.Redis(connection_pool=pool)
            rc.set(f"{name}:child", "c")
            ok = rc.get(f"{name}:parent") == b"p" and pool.pid == os.getpid()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert admin().get(f"{name}:child") == "c"
    # the parent's connections are untouched and still work
    assert before <= {c["id"] for c in clients_named(name)}
    for _ in range(10):
        assert r.get(f"{name}:parent") == b"p"
    assert wait_until(lambda: {c["id"] for c in clients_named(name)} == before, 5)
    assert pool.stats().counters["validations_failed"] == 0


def ping_until_breaker_opens(r: redis.Redis, *, within: float) -> tuple[list[BaseException], float]:
    """PING until the pool answers with its open breaker (or ``within`` seconds pass);
    returns the errors seen (the last one tells how it ended) and the slowest request's seconds."""
    errors: list[BaseException] = []
    slowest = 0.0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            r.ping()
        except redis.ConnectionError as err:
            errors.append(err)
            if isinstance(err, CircuitOpen):
                break
        finally:
            slowest = max(slowest, time.monotonic() - t0)
    return errors, slowest


def pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.ConnectionError:
        return False


# -------------------------------------------------------------- a server of our own


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def test_outage_opens_the_breaker_and_recovers(
    make_pool: Callable[..., SmartRedisPool], own_redis: Any, name: str
) -> None:
    pool = make_pool(
        port=own_redis.port,
        min_size=2,
        max_size=4,
        acquire_timeout=2.0,
        retry_attempts=0,
        validation_interval=0.05,
        breaker_failure_threshold=2,
        breaker_backoff_initial=0.05,
        breaker_backoff_max=0.2,
    )
    r = redis.Redis(connection_pool=pool)
    pool.wait(5)
    assert r.ping()
    own_redis.stop()
    # the first caller(s) find the connections dead and fail with a ConnectionError ...
    errors, _ = ping_until_breaker_opens(r, within=10)
    assert errors and isinstance(errors[-1], RedisCircuitOpenError), errors[-3:]
    # ... and once the breaker is open, every checkout fails fast
    t0 = time.monotonic()
    for _ in range(20):
        with pytest.raises(RedisCircuitOpenError):
            r.ping()
    assert (time.monotonic() - t0) / 20 < 0.05
    own_redis.start()
    assert wait_until(lambda: pings(r), 10)
    assert pool.stats().breaker_state == "closed"
    assert wait_until(lambda: len(clients_named(name, own_redis.port)) == pool.size(), 5)


def test_black_holed_host_opens_the_breaker(make_pool: Callable[..., SmartRedisPool], name: str) -> None:
    """A host that accepts TCP and never answers: redis-py would wait on the handshake for
    ever (no socket_timeout); the pool bounds it by socket_connect_timeout (here from
    connect_timeout), so the breaker opens."""
    with FaultProxy(HOST, REDIS_PORT) as proxy:
        pool = make_pool(
            port=proxy.port,
            min_size=1,
            max_size=3,
            acquire_timeout=2.0,
            connect_timeout=0.3,
            validation_timeout=0.3,
            retry_attempts=0,
            breaker_failure_threshold=2,
            breaker_backoff_initial=0.1,
            breaker_backoff_max=0.3,
        )
        r = redis.Redis(connection_pool=pool)
        assert r.ping()
        proxy.mode = FaultMode.BLACKHOLE
        proxy.reset_all()  # the host vanished: what was open is gone, new connects hang
        down = time.monotonic()
        errors, slowest = ping_until_breaker_opens(r, within=15)
        assert errors and isinstance(errors[-1], RedisCircuitOpenError), errors[-3:]
        # unbounded, redis-py's handshake held each connect ~10 s; bounded: < 1 s
        opened = time.monotonic() - down
        assert opened < 3.0, f"breaker opened {opened:.1f}s after the host vanished"
        assert slowest < 2.0 + 1.0, f"a request took {slowest:.2f}s"  # acquire_timeout + slack
        proxy.mode = FaultMode.PASS
        assert wait_until(lambda: pings(r), 10)
        assert pool.stats().breaker_state == "closed"
