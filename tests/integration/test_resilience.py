"""SmartPool against a failing PostgreSQL: outages, hung connects, killed backends.

Real server over TCP. Faults come from :class:`FaultProxy` (REFUSE, BLACKHOLE,
reset) or from ``pg_terminate_backend`` on this test's own backends only: every
engine gets a unique ``application_name`` and only those pids are touched.

Timing bounds are generous on purpose (shared, noisy 2-core box): they catch
"never" and "ten times too slow", not jitter. Measured numbers are printed with
a ``[measured]`` prefix (run with ``-s`` to see them).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from sqlalchemy_smartpool import (
    BreakerState,
    CircuitBreakerConfig,
    CircuitOpenError,
    PoolTimeout,
    SmartPool,
)
from sqlalchemy_smartpool.testing import FaultMode, FaultProxy

from ._services import HOST, MYSQL_PORT, POSTGRES_PORT, POSTGRES_URL, require_mysql, require_postgres

pytestmark = pytest.mark.integration

psycopg2 = pytest.importorskip("psycopg2")

MAX_CONNECTS = 2


# ---------------------------------------------------------------------- helpers


def measured(label: str, value: Any) -> None:
    print(f"[measured] {label}: {value}")


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``pred`` until true or ``timeout`` s passed (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def admin_query(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh superuser connection that is not part of any pool."""
    conn = psycopg2.connect(host=HOST, port=POSTGRES_PORT, user="postgres", dbname="test")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def our_backends(app: str, state: str | None = None) -> list[int]:
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    params: tuple[Any, ...] = (app,)
    if state is not None:
        sql += " AND state = %s"
        params += (state,)
    return [row[0] for row in admin_query(sql, *params)]


def terminate_ours(app: str) -> list[tuple[int, str]]:
    """pg_terminate_backend every backend of ``app`` (only ours); returns (pid, state) killed."""
    return [
        (pid, state)
        for pid, state, ok in admin_query(
            "SELECT pid, state, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            app,
        )
        if ok
    ]


def check_invariants(pool: Any) -> None:
    with pool._lock:
        pool._core.check_invariants()


def pool_matches_server(pool: Any, app: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Poll until the pool's open connections equal our backends on the server."""
    last = ""

    def same() -> bool:
        nonlocal last
        st = pool.stats()
        backends = len(our_backends(app))
        last = f"pool size={st.size} pending={st.connections_pending} backends={backends}"
        return st.connections_pending == 0 and st.size == backends

    return wait_until(same, timeout, interval=0.05), last


def percentile(samples: list[float], q: float) -> float:
    data = sorted(samples)
    rank = max(1, min(len(data), -(-int(q * len(data)) // 100)))
    return data[rank - 1]


class ConnectAttempts:
    """Counts driver connect attempts (the dialect's do_connect event) and the breaker state at each."""

    def __init__(self, engine: Engine) -> None:
        self._pool = engine.pool
        self._lock = threading.Lock()
        self.total = 0
        self.while_closed = 0
        event.listen(engine, "do_connect", self._on_connect)

    def _on_connect(self, dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
        closed = self._pool._core.breaker.state is BreakerState.CLOSED
        with self._lock:
            self.total += 1
            self.while_closed += closed

    def reset(self) -> None:
        with self._lock:
            self.total = self.while_closed = 0


def threads_in_psycopg2_connect() -> list[str]:
    """Names of the threads currently inside ``psycopg2.connect`` (from their live stacks)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    found = []
    for ident, frame in sys._current_frames().items():
        f: Any = frame
        in_connect = False
        while f is not None:
            code = f.f_code
            if code.co_name == "admin_query":  # this test's own side channel, not the pool
                in_connect = False
                break
            if code.co_name == "connect" and code.co_filename.replace("\\", "/").endswith(
                "psycopg2/__init__.py"
            ):
                in_connect = True
            f = f.f_back
        if in_connect:
            found.append(names.get(ident, f"thread-{ident}"))
    return found


class Sampler:
    """Samples, every few ms, the pool's pending connects and the threads blocked in a connect."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.max_pending = 0
        self.max_in_connect = 0
        self.connect_threads: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # the same number as stats().connections_pending, without sorting the wait ring
            self.max_pending = max(self.max_pending, self.pool._core.pending)
            names = threads_in_psycopg2_connect()
            self.max_in_connect = max(self.max_in_connect, len(names))
            self.connect_threads.update(names)
            self.samples += 1
            time.sleep(0.003)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Load:
    """Client threads running one short request after another, recording each outcome.

    ``pause()`` parks them (so a measurement in the main thread is not skewed by
    GIL hand-offs), ``resume()`` lets them go on.
    """

    EXPECTED = (CircuitOpenError, PoolTimeout, sa_exc.DBAPIError)

    def __init__(self, engine: Engine, threads: int, sql: str = "SELECT 1", pause: float = 0.005) -> None:
        self.engine = engine
        self.sql = sql
        self.pause_s = pause
        self.results: list[tuple[float, float, str]] = []  # (start, end, outcome)
        self.unexpected: list[BaseException] = []
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._go.set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True) for i in range(threads)
        ]

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._go.wait(0.05):
                continue
            start = time.monotonic()
            try:
                with self.engine.connect() as conn:
                    conn.execute(text(self.sql))
                outcome = "ok"
            except self.EXPECTED as err:
                outcome = type(err).__name__
            except Exception as err:
                outcome = "unexpected"
                self.unexpected.append(err)
            with self._lock:
                self.results.append((start, time.monotonic(), outcome))
            time.sleep(self.pause_s)

    def ok_count(self, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for s, _, o in self.results if o == "ok" and s >= since)

    def outcomes(self, since: float = 0.0) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for s, _, o in self.results:
                if s >= since:
                    out[o] = out.get(o, 0) + 1
        return out

    def pause(self) -> None:
        """Stop starting requests and wait until the running ones ended."""
        self._go.clear()
        time.sleep(0.05)  # a thread that passed the gate just now registers its start
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.engine.pool._core.in_use == 0 and not self.engine.pool._core.waiters:
                return
            time.sleep(0.01)

    def resume(self) -> None:
        self._go.set()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._go.set()
        for t in self._threads:
            t.join(15)


# --------------------------------------------------------------------- fixtures


@pytest.fixture
def app_name() -> Iterator[str]:
    require_postgres()
    name = f"sp-resil-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(Exception):
        terminate_ours(name)  # whatever a failed test left behind


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.pool.close()  # type: ignore[attr-defined]


def smart_engine(url: str, app: str, engines: list[Engine], **pool_kw: Any) -> Engine:
    engine = create_engine(url, poolclass=SmartPool, connect_args={"application_name": app}, **pool_kw)
    engines.append(engine)
    return engine


# ------------------------------------------------- outage: breaker and recovery


@pytest.mark.parametrize("fault", [FaultMode.REFUSE, FaultMode.BLACKHOLE], ids=lambda m: m.value)
def test_outage_opens_breaker_fails_fast_and_recovers(
    pg_proxy: FaultProxy, app_name: str, engines: list[Engine], fault: FaultMode
) -> None:
    """Database gone (connections reset, new ones refused or hung):

    * the breaker opens after ``failure_threshold`` failed connect *attempts*
      (retries count one by one, so it does not take threshold x attempts);
    * while open, a checkout fails at once with CircuitOpenError (an
      OperationalError) naming the pool's state -- p99 < 5 ms over 200 checkouts;
    * never more than ``max_concurrent_connects`` threads sit in a connect,
      and only the pool's workers connect, never a request thread;
    * back in PASS, the first checkout succeeds within one probe interval and
      the pool refills to ``min_size``. Default backoff settings otherwise.
    """
    threshold = 3
    engine = smart_engine(
        pg_proxy.url_for(POSTGRES_URL),
        app_name,
        engines,
        min_size=2,
        max_size=10,
        connect_timeout=1,
        acquire_timeout=2,
        max_concurrent_connects=MAX_CONNECTS,
        breaker=CircuitBreakerConfig(failure_threshold=threshold),
    )
    pool: Any = engine.pool
    attempts = ConnectAttempts(engine)
    pool.wait(10)
    with Load(engine, threads=6) as load, Sampler(pool) as sampler:
        assert wait_until(lambda: load.ok_count() >= 30, 10), load.outcomes()

        # -- outage
        attempts.reset()
        pg_proxy.mode = fault
        t_out = time.monotonic()
        pg_proxy.reset_all()
        opened = wait_until(lambda: pool.stats().breaker_state == "open", 15)
        t_open = time.monotonic() - t_out
        attempts_before_open = attempts.while_closed
        measured(f"{fault.value}: breaker open after", f"{t_open:.2f}s, {attempts_before_open} attempts")
        assert opened, f"breaker still {pool.stats().breaker_state} 15s into the outage: {pool.status()}"
        stats = pool.stats()
        assert stats.counters["breaker_opened"] == 1
        assert attempts_before_open <= threshold + MAX_CONNECTS - 1, (
            f"{attempts_before_open} connect attempts before the breaker opened "
            f"(failure_threshold={threshold}): failures must be counted per attempt"
        )

        # -- fail fast while open (load parked: measure the pool, not GIL hand-offs)
        load.pause()
        breaker = pool._core.breaker
        latencies: list[float] = []
        sample_err: CircuitOpenError | None = None
        deadline = time.monotonic() + 20
        while len(latencies) < 200 and time.monotonic() < deadline:
            # "open" means between probes; a checkout when a probe is due waits for it (by design)
            if breaker.state is not BreakerState.OPEN or breaker.retry_after() < 0.02:
                time.sleep(0.002)
                continue
            t0 = time.perf_counter()
            try:
                engine.connect().close()
            except CircuitOpenError as err:
                dt = time.perf_counter() - t0
                latencies.append(dt)
                sample_err = err
            except (PoolTimeout, sa_exc.OperationalError):
                continue  # the state moved under us (a probe went out); not an "open" sample
            else:
                pytest.fail("a checkout succeeded while the database was unreachable")
        assert len(latencies) == 200, f"only {len(latencies)} checkouts while open"
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        measured(f"{fault.value}: open-breaker checkout", f"p50={p50 * 1e3:.3f}ms p99={p99 * 1e3:.3f}ms")
        assert p99 < 0.005, f"open-breaker checkout p99 {p99 * 1e3:.2f}ms"
        assert sample_err is not None
        assert isinstance(sample_err, sa_exc.OperationalError)
        assert sample_err.retry_after > 0
        message = str(sample_err)
        assert "breaker=open" in message and "size=" in message and "max_size=10" in message, message

        # -- recovery
        retry_after = breaker.retry_after() if breaker.state is BreakerState.OPEN else 0.0
        t_switch = time.monotonic()
        pg_proxy.mode = FaultMode.PASS
        while True:
            try:
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT 1")).scalar() == 1
                break
            except (CircuitOpenError, PoolTimeout, sa_exc.OperationalError):
                assert time.monotonic() - t_switch < 15, f"no recovery: {pool.status()}"
                time.sleep(0.005)
        recovery = time.monotonic() - t_switch
        measured(
            f"{fault.value}: first checkout after PASS",
            f"{recovery:.3f}s (probe was due in {retry_after:.3f}s)",
        )
        assert recovery < 3.0
        assert recovery <= retry_after + 1.5, (
            f"recovered {recovery:.2f}s after PASS, probe due {retry_after:.2f}s"
        )
        assert wait_until(lambda: pool.stats().size >= 2, 5), f"did not refill to min_size: {pool.status()}"
        t_ok = time.monotonic()
        load.resume()
        assert wait_until(lambda: load.ok_count(since=t_ok) >= 50, 15), load.outcomes(since=t_ok)
        load.pause()
        assert load.outcomes(since=t_ok) == {"ok": load.ok_count(since=t_ok)}, load.outcomes(since=t_ok)

    # the outage produced only the errors an application expects
    assert not load.unexpected, load.unexpected[:3]
    measured(
        f"{fault.value}: max threads in a connect", f"{sampler.max_in_connect} ({sampler.samples} samples)"
    )
    assert sampler.max_pending <= MAX_CONNECTS
    assert sampler.max_in_connect <= MAX_CONNECTS
    assert all(name.startswith("smartpool-worker-") for name in sampler.connect_threads), (
        sampler.connect_threads
    )
    if fault is FaultMode.BLACKHOLE:
        assert sampler.max_in_connect >= 1, "the sampler never saw the hung connects"
    stats = pool.stats()
    assert stats.breaker_state == "closed"
    assert stats.counters["breaker_opened"] == 1
    check_invariants(pool)
    ok, last = pool_matches_server(pool, app_name)
    assert ok, last


def test_open_breaker_is_not_pushed_back_by_connects_already_in_flight(
    pg_proxy: FaultProxy, app_name: str, engines: list[Engine]
) -> None:
    """The first probe after opening is due ``backoff_initial`` later.

    Connects that were already in flight when the breaker opened are not
    probes; their failures must not count as failed probes, each of which
    doubles the wait (with 2 concurrent connects the first probe went out after
    2x backoff_initial: recovery took twice as long as configured).
    """
    backoff = 1.5
    engine = smart_engine(
        pg_proxy.url_for(POSTGRES_URL),
        app_name,
        engines,
        min_size=4,
        max_size=10,
        retry_attempts=0,
        max_concurrent_connects=MAX_CONNECTS,
        breaker=CircuitBreakerConfig(
            failure_threshold=2, backoff_initial=backoff, backoff_max=10 * backoff, jitter=0.0
        ),
    )
    pool: Any = engine.pool
    attempt_times: list[float] = []
    event.listen(engine, "do_connect", lambda *a: attempt_times.append(time.monotonic()))
    pg_proxy.mode = FaultMode.REFUSE
    with contextlib.suppress(PoolTimeout):
        pool.wait(0)  # starts the background connects without a checkout
    assert wait_until(lambda: pool.stats().breaker_state == "open", 10), pool.status()
    t_open = time.monotonic()
    n_before = len(attempt_times)
    assert wait_until(lambda: len(attempt_times) > n_before + 0, backoff * 3 + 3), "no probe at all"
    first_probe = attempt_times[n_before] - t_open
    measured("first probe after open", f"{first_probe:.2f}s (backoff_initial={backoff}s)")
    assert first_probe < backoff + 0.6, f"first probe {first_probe:.2f}s after opening, want ~{backoff}s"


def test_close_with_connects_in_flight_leaves_nothing_open(
    pg_proxy: FaultProxy, app_name: str, engines: list[Engine]
) -> None:
    """``close()`` while background connects are under way (slow server): when they
    finish, their connections must be closed -- not parked idle in a pool whose
    housekeeper is gone and that nobody will check out from again (they were,
    until 97cb9cb)."""
    pg_proxy.connect_delay = 0.5
    engine = smart_engine(pg_proxy.url_for(POSTGRES_URL), app_name, engines, min_size=2, max_size=4)
    pool: Any = engine.pool
    with contextlib.suppress(PoolTimeout):
        pool.wait(0)  # starts the prewarm connects
    assert wait_until(lambda: pool.stats().connections_pending == 2, 2), pool.status()
    pool.close()
    assert wait_until(lambda: pool.stats().connections_pending == 0, 5), pool.status()
    left = wait_until(lambda: not our_backends(app_name) and pool.stats().size == 0, 3, 0.05)
    assert left, f"{len(our_backends(app_name))} server connections open after close(): {pool.status()}"


# ------------------------------------------------------- connect_timeout injection


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        (POSTGRES_URL, "psycopg2"),
        (POSTGRES_URL.replace("+psycopg2", "+psycopg"), "psycopg"),
        ("mysql+mysqldb://root@127.0.0.1:3306/test", "MySQLdb"),
        ("mysql+pymysql://root@127.0.0.1:3306/test", "pymysql"),
    ],
    ids=["psycopg2", "psycopg", "mysqlclient", "pymysql"],
)
def test_connect_timeout_bounds_a_hung_connect(url: str, driver: str, engines: list[Engine]) -> None:
    """``connect_timeout`` reaches the driver (a fraction is fine), so a connect that
    hangs (server accepts TCP, never answers) fails in about that time; with the
    breaker at 1 failure the waiting checkout gets CircuitOpenError, not a hang."""
    pytest.importorskip(driver)
    if "mysql" in url:
        require_mysql()
        port = MYSQL_PORT
        connect_args: dict[str, Any] = {}
    else:
        require_postgres()
        port = POSTGRES_PORT
        connect_args = {"application_name": f"sp-resil-ct-{uuid.uuid4().hex[:8]}"}
    with FaultProxy(HOST, port) as proxy:
        engine = create_engine(
            proxy.url_for(url),
            poolclass=SmartPool,
            connect_args=connect_args,
            min_size=0,
            max_size=2,
            connect_timeout=1.5,
            retry_attempts=0,
            acquire_timeout=5,
            validation_interval=0,
            breaker=CircuitBreakerConfig(failure_threshold=1),
        )
        engines.append(engine)
        with engine.connect() as conn:  # a fractional timeout must not break a normal connect
            assert conn.execute(text("SELECT 1")).scalar() == 1
        proxy.mode = FaultMode.BLACKHOLE
        proxy.reset_all()
        t0 = time.monotonic()
        with pytest.raises((CircuitOpenError, PoolTimeout)) as info:
            engine.connect()
        elapsed = time.monotonic() - t0
        measured(f"{driver}: hung connect failed after", f"{elapsed:.2f}s ({type(info.value).__name__})")
        assert isinstance(info.value, CircuitOpenError), f"hung for the whole acquire_timeout: {info.value}"
        assert elapsed < 4.0  # 1.5 s, rounded up to whole seconds by libpq / libmysqlclient
        engine.pool.close()  # type: ignore[attr-defined]


def test_permanent_connect_error_is_not_retried(app_name: str, engines: list[Engine]) -> None:
    """``retry_attempts`` is for transient failures; retrying "database does not
    exist" (or a bad password) cannot help and only delays the error and loads
    the server. the engine promises such errors are not retried."""
    engine = create_engine(
        POSTGRES_URL.replace("/test", "/smartpool_no_such_db"),
        poolclass=SmartPool,
        connect_args={"application_name": app_name},
        min_size=0,
        retry_attempts=2,
        retry_backoff_initial=0.05,
        acquire_timeout=1,
        breaker=CircuitBreakerConfig(failure_threshold=10),  # keep the breaker out of the way
    )
    engines.append(engine)
    attempts: list[float] = []
    event.listen(engine, "do_connect", lambda *a: attempts.append(time.monotonic()))
    with pytest.raises((CircuitOpenError, PoolTimeout, sa_exc.OperationalError)):
        engine.connect()
    assert attempts
    first_connect = [t for t in attempts if t - attempts[0] < 0.4]  # the next connect is a tick later
    assert len(first_connect) == 1, f"{len(first_connect)} attempts for one connect to a missing database"


def test_connect_timeout_set_by_the_user_wins(
    pg_proxy: FaultProxy, app_name: str, engines: list[Engine]
) -> None:
    """The pool only fills in ``connect_timeout`` when the application did not set one."""
    engine = create_engine(
        pg_proxy.url_for(POSTGRES_URL),
        poolclass=SmartPool,
        connect_args={"application_name": app_name, "connect_timeout": 3},
        min_size=0,
        connect_timeout=1,
        retry_attempts=0,
        acquire_timeout=10,
        breaker=CircuitBreakerConfig(failure_threshold=1),
    )
    engines.append(engine)
    pg_proxy.mode = FaultMode.BLACKHOLE
    t0 = time.monotonic()
    with pytest.raises((CircuitOpenError, PoolTimeout)):
        engine.connect()
    elapsed = time.monotonic() - t0
    measured("user connect_timeout=3 over pool connect_timeout=1", f"{elapsed:.2f}s")
    assert 2.7 <= elapsed < 8.0


# ------------------------------------------------------------ killed backends


def test_killing_every_backend_fails_only_the_requests_in_flight(
    app_name: str, engines: list[Engine]
) -> None:
    """pg_terminate_backend on every pool connection while N threads are mid-query.

    Only the requests in flight fail (each with connection_invalidated): at most
    one per thread, so at most N. (A thread caught between two requests may
    instead fail on the connection it had just returned: reused within
    ``validation_interval``, it is not pinged.) The idle connections that died
    too are caught before reuse -- not by age (validation_interval is 60 s
    here) but because the first disconnect marks every older connection
    suspect -- so every later request of every thread succeeds.
    """
    n = 6
    idle_extra = 2
    engine = smart_engine(
        POSTGRES_URL,
        app_name,
        engines,
        min_size=n + idle_extra,
        max_size=n + idle_extra + 2,
        validation_interval=60,
        acquire_timeout=10,
    )
    pool: Any = engine.pool
    pool.wait(10)
    # (started after the kill was complete?, error) per request, per thread
    per_thread: list[list[tuple[bool, BaseException | None]]] = [[] for _ in range(n)]
    stop = threading.Event()
    # Threads start no new request between the kill and the moment every killed
    # backend is gone: pg_terminate_backend only signals, and a backend that has
    # not exited yet still answers a ping. "Later" requests start after that.
    gate = threading.Event()
    gate.set()
    kill_complete = threading.Event()

    def worker(mine: list[tuple[bool, BaseException | None]]) -> None:
        while not stop.is_set():
            gate.wait(20)
            after = kill_complete.is_set()
            err: BaseException | None = None
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT pg_sleep(0.3)"))
            except Exception as e:
                err = e
            mine.append((after, err))

    threads = [
        threading.Thread(target=worker, args=(per_thread[i],), name=f"kill-{i}", daemon=True)
        for i in range(n)
    ]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(our_backends(app_name, "active")) == n, 10, 0.02), "not all mid-query"
        gate.clear()
        killed = terminate_ours(app_name)
        pids = {pid for pid, _ in killed}
        assert wait_until(lambda: not pids & set(our_backends(app_name)), 10, 0.01), "killed backends linger"
        kill_complete.set()
        gate.set()
        in_flight = sum(1 for _, state in killed if state == "active")
        assert in_flight >= 1 and len(killed) >= n + idle_extra, killed
        assert wait_until(lambda: all(sum(a for a, _ in r) >= 3 for r in per_thread), 15), [
            len(r) for r in per_thread
        ]
    finally:
        stop.set()
        gate.set()
        for t in threads:
            t.join(10)

    failed = [err for results in per_thread for _, err in results if err is not None]
    total = sum(len(r) for r in per_thread)
    measured(
        "kill-all", f"{len(killed)} killed ({in_flight} mid-query), {len(failed)}/{total} requests failed"
    )
    for err in failed:
        assert isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated, repr(err)
    assert 1 <= len(failed) <= n, [
        [(a, None if e is None else repr(e)[:80]) for a, e in r] for r in per_thread
    ]
    for i, results in enumerate(per_thread):
        assert sum(err is not None for _, err in results) <= 1, f"thread {i}: {results}"
        later = [err for after, err in results if after]
        assert all(err is None for err in later), f"thread {i} failed after the kill: {later}"

    # a burst holding every connection at once takes the killed idle ones too
    barrier = threading.Barrier(n + idle_extra, timeout=10)
    burst_errors: list[BaseException] = []

    def burst() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                barrier.wait()
        except Exception as e:
            burst_errors.append(e)

    for _ in range(2):
        group = [threading.Thread(target=burst) for _ in range(n + idle_extra)]
        for t in group:
            t.start()
        for t in group:
            t.join(20)
    assert not burst_errors, burst_errors[:3]
    assert pool.stats().counters["validations_failed"] >= 1  # suspects were pinged, not used
    check_invariants(pool)
    ok, last = pool_matches_server(pool, app_name)
    assert ok, last


def test_after_a_mass_disconnect_only_pool_workers_reconnect(
    pg_proxy: FaultProxy, app_name: str, engines: list[Engine]
) -> None:
    """After every backend died, the dead connections are replaced by the pool's
    workers: no request thread ever sits in ``psycopg2.connect`` (SQLAlchemy's
    default ``_invalidate`` makes each request thread reconnect), and at most
    the first request sees the disconnect."""
    size = 4
    engine = smart_engine(
        pg_proxy.url_for(POSTGRES_URL), app_name, engines, min_size=size, max_size=6, validation_interval=60
    )
    pool: Any = engine.pool
    pool.wait(10)
    pg_proxy.connect_delay = 0.1  # reconnects last long enough for the sampler to see who makes them
    errors: list[BaseException] = []
    barrier = threading.Barrier(size, timeout=10)

    def hold_one() -> None:
        # all connections out at once, so every dead idle one is checked out
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                barrier.wait()
        except Exception as err:
            errors.append(err)

    with Sampler(pool) as sampler:
        pids = {pid for pid, _ in terminate_ours(app_name)}
        # like a restart: every backend is gone before the next request
        assert wait_until(lambda: not pids & set(our_backends(app_name)), 10, 0.01), "killed backends linger"
        for _ in range(10):
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except sa_exc.DBAPIError as err:
                assert err.connection_invalidated, repr(err)
                errors.append(err)
        assert len(errors) <= 1, errors
        errors.clear()
        group = [threading.Thread(target=hold_one, name=f"hold-{i}") for i in range(size)]
        for t in group:
            t.start()
        for t in group:
            t.join(20)
        assert not errors, errors
        ok, last = pool_matches_server(pool, app_name)
    assert ok, last
    assert sampler.connect_threads, "the sampler saw no reconnect at all"
    assert all(name.startswith("smartpool-worker-") for name in sampler.connect_threads), (
        sampler.connect_threads
    )
    check_invariants(pool)
