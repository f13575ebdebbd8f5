"""FaultProxy against real PostgreSQL, MariaDB and Redis servers.

Timing bounds are deliberately loose on the upper side: the CI machine is
shared, and these tests must catch a fault that does not happen (or happens
forever), not a few milliseconds of jitter.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sqlalchemy_smartpool.testing import FaultMode, FaultProxy

from ._services import (
    HOST,
    MYSQL_PORT,
    POSTGRES_PORT,
    POSTGRES_URL,
    REDIS_PORT,
    require_mysql,
    require_postgres,
    require_redis,
)

pytestmark = pytest.mark.integration

psycopg2 = pytest.importorskip("psycopg2")


@pytest.fixture
def redis_proxy() -> Iterator[FaultProxy]:
    require_redis()
    with FaultProxy(HOST, REDIS_PORT) as proxy:
        yield proxy


@pytest.fixture
def pg_conns() -> Iterator[list[Any]]:
    """Connections to close at teardown, whatever state the test left them in."""
    conns: list[Any] = []
    yield conns
    for conn in conns:
        conn.close()


def pg_connect(proxy: FaultProxy, conns: list[Any] | None = None, **kwargs: Any) -> Any:
    conn = psycopg2.connect(host=proxy.host, port=proxy.port, user="postgres", dbname="test", **kwargs)
    conn.autocommit = True
    if conns is not None:
        conns.append(conn)
    return conn


def select_one(conn: Any, sql: str = "SELECT 1") -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def redis_command(sock: socket.socket, *args: str) -> None:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    sock.sendall(b"".join(parts))


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def swallow_errors(fn: Any, *args: Any) -> Any:
    """Wrap ``fn`` for a thread that is expected to die with a driver error."""

    def run() -> None:
        with contextlib.suppress(Exception):
            fn(*args)

    return run


# -- PASS ----------------------------------------------------------------------


def test_pass_forwards_postgres_query(pg_proxy: FaultProxy, pg_conns: list[Any]) -> None:
    conn = pg_connect(pg_proxy, pg_conns)
    assert select_one(conn, "SELECT 41 + 1") == 42
    assert select_one(conn, "SELECT inet_server_port()") == POSTGRES_PORT
    assert pg_proxy.active_connections == 1
    assert pg_proxy.total_accepted == 1


def test_pass_forwards_redis_ping(redis_proxy: FaultProxy) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis(host=redis_proxy.host, port=redis_proxy.port, socket_timeout=5)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_pass_forwards_mysql_query() -> None:
    pymysql = pytest.importorskip("pymysql")
    require_mysql()
    with FaultProxy(HOST, MYSQL_PORT) as proxy:
        conn = pymysql.connect(host=proxy.host, port=proxy.port, user="root", password="", database="test")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 6 * 7")
                assert cur.fetchone()[0] == 42
        finally:
            conn.close()


def test_url_for_points_at_proxy_and_keeps_the_rest(pg_proxy: FaultProxy) -> None:
    url = "postgresql+psycopg2://alice:p%40ss:w0rd@db.example:6543/app?sslmode=disable"
    out = pg_proxy.url_for(url)
    assert out == (
        f"postgresql+psycopg2://alice:p%40ss%3Aw0rd@{pg_proxy.host}:{pg_proxy.port}/app?sslmode=disable"
    )
    from sqlalchemy.engine import make_url

    parsed = make_url(out)
    assert parsed.password == "p@ss:w0rd"
    assert (parsed.host, parsed.port) == (pg_proxy.host, pg_proxy.port)
    assert "w0rd" not in repr(pg_proxy)


def test_url_for_works_with_sqlalchemy_engine(pg_proxy: FaultProxy) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(pg_proxy.url_for(POSTGRES_URL))
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        assert pg_proxy.total_accepted == 1
    finally:
        engine.dispose()


# -- REFUSE --------------------------------------------------------------------


def test_refuse_fails_new_connections_fast(pg_proxy: FaultProxy, pg_conns: list[Any]) -> None:
    existing = pg_connect(pg_proxy, pg_conns)
    pg_proxy.mode = FaultMode.REFUSE
    assert pg_proxy.mode is FaultMode.REFUSE

    start = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        pg_connect(pg_proxy, pg_conns, connect_timeout=5)
    assert time.monotonic() - start < 1.0
    assert pg_proxy.total_accepted == 2
    assert pg_proxy.active_connections == 1

    # REFUSE only affects new connections.
    assert select_one(existing) == 1

    pg_proxy.mode = FaultMode.PASS
    assert select_one(pg_connect(pg_proxy, pg_conns)) == 1


# -- BLACKHOLE -------------------------------------------------------------------


def test_blackhole_connect_times_out(pg_proxy: FaultProxy, pg_conns: list[Any]) -> None:
    pg_proxy.mode = FaultMode.BLACKHOLE
    start = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="timeout"):
        pg_connect(pg_proxy, pg_conns, connect_timeout=1)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 3.0, elapsed  # libpq may round 1 s up to 2 s

    pg_proxy.mode = FaultMode.PASS
    assert select_one(pg_connect(pg_proxy, pg_conns, connect_timeout=5)) == 1


def test_blackhole_freezes_open_connection_and_pass_resumes_it(
    pg_proxy: FaultProxy, pg_conns: list[Any]
) -> None:
    conn = pg_connect(pg_proxy, pg_conns)
    assert select_one(conn) == 1
    pg_proxy.mode = FaultMode.BLACKHOLE

    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(select_one(conn, "SELECT 'after'")), daemon=True)
    worker.start()
    worker.join(0.7)
    assert worker.is_alive(), "query completed although the proxy is blackholed"
    assert result == []

    # Held bytes are delivered once the "network" heals.
    pg_proxy.mode = FaultMode.PASS
    worker.join(5.0)
    assert not worker.is_alive()
    assert result == ["after"]
    assert select_one(conn) == 1


def test_blackhole_redis_socket_times_out_then_resumes(redis_proxy: FaultProxy) -> None:
    with socket.create_connection((redis_proxy.host, redis_proxy.port), timeout=5) as sock:
        redis_command(sock, "PING")
        assert recv_exactly(sock, 7) == b"+PONG\r\n"

        redis_proxy.mode = FaultMode.BLACKHOLE
        redis_command(sock, "ECHO", "held")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(100)

        redis_proxy.mode = FaultMode.PASS
        sock.settimeout(5)
        assert recv_exactly(sock, 10) == b"$4\r\nheld\r\n"


def test_stop_in_blackhole_returns_promptly(pg_conns: list[Any]) -> None:
    require_postgres()
    proxy = FaultProxy(HOST, POSTGRES_PORT).start()
    try:
        conn = pg_connect(proxy, pg_conns)
        assert select_one(conn) == 1
        proxy.mode = FaultMode.BLACKHOLE
        # A frozen query and a half-open new connection, both held by the proxy.
        threading.Thread(target=swallow_errors(select_one, conn), daemon=True).start()
        pending = socket.create_connection((proxy.host, proxy.port), timeout=2)
        time.sleep(0.1)
        assert proxy.active_connections == 2
    finally:
        start = time.monotonic()
        proxy.stop()
        elapsed = time.monotonic() - start
    assert elapsed < 2.0, elapsed
    proxy.stop()  # idempotent
    assert pending.recv(10) == b""  # closed by the proxy, not left hanging
    pending.close()
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()


# -- delays ----------------------------------------------------------------------


def test_connect_delay_slows_connect(pg_proxy: FaultProxy, pg_conns: list[Any]) -> None:
    pg_proxy.connect_delay = 0.15
    start = time.monotonic()
    conn = pg_connect(pg_proxy, pg_conns, connect_timeout=5)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 2.0, elapsed

    pg_proxy.connect_delay = 0
    start = time.monotonic()
    pg_connect(pg_proxy, pg_conns, connect_timeout=5)
    assert time.monotonic() - start < 0.15 + 0.5  # generous; checks the reset took effect
    assert select_one(conn) == 1


def test_latency_delays_each_direction(pg_proxy: FaultProxy, pg_conns: list[Any]) -> None:
    conn = pg_connect(pg_proxy, pg_conns)
    select_one(conn)
    pg_proxy.latency = 0.1
    start = time.monotonic()
    assert select_one(conn) == 1
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.5, elapsed  # 0.1 s each way

    pg_proxy.latency = 0
    start = time.monotonic()
    select_one(conn)
    assert time.monotonic() - start < 0.15


def test_latency_keeps_order_and_pipelines(redis_proxy: FaultProxy) -> None:
    """Chunks are delayed, not serialised: 1000 pipelined commands cost ~one RTT."""
    redis_proxy.latency = 0.05
    key = f"smartpool:proxy:{uuid.uuid4()}"
    count = 1000
    with socket.create_connection((redis_proxy.host, redis_proxy.port), timeout=5) as sock:
        start = time.monotonic()
        for _ in range(count):
            redis_command(sock, "INCR", key)  # one chunk each: many queued items
        expected = b"".join(b":%d\r\n" % i for i in range(1, count + 1))
        assert recv_exactly(sock, len(expected)) == expected
        elapsed = time.monotonic() - start
        redis_command(sock, "DEL", key)
        assert recv_exactly(sock, 4) == b":1\r\n"
    assert 0.1 <= elapsed < 1.5, elapsed


def test_large_payload_integrity_with_latency(redis_proxy: FaultProxy) -> None:
    """Multi-megabyte values exercise backpressure and the held-bytes limit."""
    redis = pytest.importorskip("redis")
    redis_proxy.latency = 0.005
    payload = bytes(range(256)) * (16 * 1024 + 7)  # ~4 MiB, not chunk-aligned
    key = f"smartpool:proxy:{uuid.uuid4()}"
    client = redis.Redis(host=redis_proxy.host, port=redis_proxy.port, socket_timeout=10)
    try:
        client.set(key, payload)
        assert client.get(key) == payload
    finally:
        client.delete(key)
        client.close()


# -- reset_all -------------------------------------------------------------------


def test_reset_all_breaks_open_connections(pg_proxy: FaultProxy, pg_conns: list[Any]) -> None:
    conns = [pg_connect(pg_proxy, pg_conns) for _ in range(3)]
    for conn in conns:
        assert select_one(conn) == 1
    assert pg_proxy.active_connections == 3

    assert pg_proxy.reset_all() == 3
    assert pg_proxy.active_connections == 0
    for conn in conns:
        with pytest.raises(psycopg2.OperationalError):
            select_one(conn)

    assert pg_proxy.reset_all() == 0
    assert select_one(pg_connect(pg_proxy, pg_conns)) == 1  # the proxy itself is fine


# -- EOF propagation -------------------------------------------------------------


def test_half_close_is_forwarded() -> None:
    """The client's FIN reaches upstream while the reverse direction stays open."""
    listener = socket.create_server((HOST, 0))
    received: list[bytes] = []

    def echo_after_eof() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            received.append(data)
            conn.sendall(data[::-1])

    server = threading.Thread(target=echo_after_eof, daemon=True)
    server.start()
    try:
        with FaultProxy(HOST, listener.getsockname()[1]) as proxy:
            with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
                sock.sendall(b"hello proxy")
                sock.shutdown(socket.SHUT_WR)
                assert recv_exactly(sock, 11) == b"yxorp olleh"
                assert sock.recv(10) == b""
            server.join(5)
            assert received == [b"hello proxy"]
            deadline = time.monotonic() + 2
            while proxy.active_connections and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proxy.active_connections == 0
    finally:
        listener.close()


# -- load ------------------------------------------------------------------------


def test_many_concurrent_postgres_connections(pg_proxy: FaultProxy) -> None:
    threads, queries = 50, 20
    barrier = threading.Barrier(threads + 1, timeout=30)
    errors: list[BaseException] = []
    done = []

    def worker(n: int) -> None:
        try:
            conn = pg_connect(pg_proxy, connect_timeout=10)
            try:
                barrier.wait()  # all connections open at once
                barrier.wait()  # main thread has counted them
                for i in range(queries):
                    assert select_one(conn, f"SELECT {n * 1000 + i}") == n * 1000 + i
                done.append(n)
            finally:
                conn.close()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for t in workers:
        t.start()
    barrier.wait()
    assert pg_proxy.active_connections == threads
    barrier.wait()
    for t in workers:
        t.join(30)
    assert errors == []
    assert sorted(done) == list(range(threads))
    assert pg_proxy.total_accepted == threads


def test_two_hundred_concurrent_redis_connections(redis_proxy: FaultProxy) -> None:
    socks = [socket.create_connection((redis_proxy.host, redis_proxy.port), timeout=10) for _ in range(200)]
    try:
        for sock in socks:
            redis_command(sock, "PING")
        for sock in socks:
            assert recv_exactly(sock, 7) == b"+PONG\r\n"
        assert redis_proxy.active_connections == 200
    finally:
        for sock in socks:
            sock.close()


# -- validation ------------------------------------------------------------------


def test_settings_are_validated() -> None:
    proxy = FaultProxy(HOST, 1)
    with pytest.raises(ValueError):
        proxy.latency = -0.1
    with pytest.raises(ValueError):
        proxy.connect_delay = float("nan")
    with pytest.raises(ValueError):
        proxy.mode = "sideways"
    proxy.mode = "blackhole"
    assert proxy.mode is FaultMode.BLACKHOLE
    assert proxy.reset_all() == 0
    proxy.stop()  # never started: no-op


def test_unreachable_upstream_resets_client_and_proxy_survives() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        dead_port = probe.getsockname()[1]  # nothing listens here once closed
    with FaultProxy(HOST, dead_port) as proxy:
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(psycopg2.OperationalError):
                pg_connect(proxy, connect_timeout=5)
            assert time.monotonic() - start < 1.0
        assert proxy.total_accepted == 3
        assert proxy.active_connections == 0
