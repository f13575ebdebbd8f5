"""AsyncSmartRedisPool against the real Redis (db 15, own key prefix and client names)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from sqlalchemy_smartpool import AsyncSmartRedisPool
from sqlalchemy_smartpool.errors import AcquireTimeout, CircuitOpen, PoolClosedError, WrongEventLoop
from sqlalchemy_smartpool.testing import FaultMode, FaultProxy

from ._services import HOST, REDIS_PORT, require_redis

pytestmark = pytest.mark.integration

DB = 15


def clients_named(name: str) -> list[dict[str, Any]]:
    r = redis.Redis(host=HOST, port=REDIS_PORT, decode_responses=True)
    try:
        return [c for c in r.client_list() if c.get("name") == name]
    finally:
        r.close()


async def until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return bool(predicate())
        await asyncio.sleep(0.02)
    return True


def run(coro_fn: Any, **kw: Any) -> None:
    require_redis()
    name = f"sp-ait-{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        kw.setdefault("acquire_timeout", 5.0)
        pool = AsyncSmartRedisPool(host=HOST, port=REDIS_PORT, db=DB, client_name=name, **kw)
        try:
            await coro_fn(pool, name)
            assert await until(lambda: len(clients_named(name)) == pool.size()), (
                len(clients_named(name)),
                pool.size(),
            )
        finally:
            await pool.aclose()
            r = redis.Redis(host=HOST, port=REDIS_PORT, db=DB)
            keys = list(r.scan_iter(f"{name}:*"))
            if keys:
                r.delete(*keys)
            r.close()
        assert await until(lambda: not clients_named(name)), "connections left after aclose()"

    asyncio.run(main())


@pytest.mark.parametrize("protocol", [2, 3])
def test_commands_pipeline_and_resp(protocol: int) -> None:
    async def body(pool: AsyncSmartRedisPool, name: str) -> None:
        r = aioredis.Redis(connection_pool=pool)
        assert await r.set(f"{name}:k", "v")
        assert await r.get(f"{name}:k") == "v"
        async with r.pipeline(transaction=True) as p:
            p.incr(f"{name}:n").incr(f"{name}:n")
            assert await p.execute() == [1, 2]
        info = await r.client_info()
        assert int(info["resp"]) == protocol and info["name"] == name and int(info["db"]) == DB
        await pool.wait(5)
        assert pool.size() == 2

    run(body, protocol=protocol, decode_responses=True, min_size=2, max_size=4)


def test_concurrent_tasks_wait_fairly_and_time_out_as_connection_error() -> None:
    async def body(pool: AsyncSmartRedisPool, name: str) -> None:
        r = aioredis.Redis(connection_pool=pool)
        results = await asyncio.gather(*(r.incr(f"{name}:c") for _ in range(200)))
        assert sorted(results) == list(range(1, 201))
        assert pool.size() <= 3
        held = [await pool.get_connection() for _ in range(3)]
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(redis.ConnectionError) as info:
            await r.ping()
        assert isinstance(info.value, AcquireTimeout)
        assert asyncio.get_running_loop().time() - t0 < 2
        for c in held:
            await pool.release(c)

    run(body, max_size=3, acquire_timeout=0.3)


def test_pubsub_and_blpop() -> None:
    async def body(pool: AsyncSmartRedisPool, name: str) -> None:
        r = aioredis.Redis(connection_pool=pool)
        ps = r.pubsub()
        await ps.subscribe(f"{name}:ch")
        assert (await ps.get_message(timeout=2))["type"] == "subscribe"

        async def worker(i: int) -> None:
            for n in range(50):
                await r.set(f"{name}:w{i}", n)
                assert await r.get(f"{name}:w{i}") == str(n)

        async def publisher() -> None:
            for i in range(50):
                await r.publish(f"{name}:ch", f"m{i}")

        await asyncio.gather(*(worker(i) for i in range(4)), publisher())
        got = []
        while len(got) < 50:
            msg = await ps.get_message(timeout=2)
            assert msg is not None
            got.append(msg["data"])
        assert got == [f"m{i}" for i in range(50)]
        await ps.aclose()
        assert await r.blpop([f"{name}:empty"], timeout=1) is None  # longer than validation_interval
        assert await r.ping()

    run(body, decode_responses=True, max_size=6, validation_interval=0.1)


def test_dirty_release_and_close() -> None:
    async def body(pool: AsyncSmartRedisPool, name: str) -> None:
        conn = await pool.get_connection()
        await conn.send_command("SET", f"{name}:d", "1")
        await asyncio.sleep(0.05)
        await pool.release(conn)
        assert pool.stats().counters["connections_invalidated"] == 1
        r = aioredis.Redis(connection_pool=pool)
        assert await r.get(f"{name}:d") == b"1"
        await pool.release(conn)  # twice: ignored

    run(body, max_size=1)


def test_closed_pool_and_other_loop() -> None:
    require_redis()
    name = f"sp-ait-{uuid.uuid4().hex[:10]}"
    pool = AsyncSmartRedisPool(host=HOST, port=REDIS_PORT, db=DB, client_name=name, max_size=2)

    async def first() -> None:
        assert await aioredis.Redis(connection_pool=pool).ping()

    async def other_loop() -> None:
        with pytest.raises(WrongEventLoop):
            await aioredis.Redis(connection_pool=pool).ping()
        await pool.disconnect()  # releases the binding: usable on this loop now
        assert await aioredis.Redis(connection_pool=pool).ping()
        await pool.aclose()
        with pytest.raises(redis.ConnectionError) as info:
            await aioredis.Redis(connection_pool=pool).ping()
        assert isinstance(info.value, PoolClosedError)
        assert await until(lambda: not clients_named(name))

    asyncio.run(first())
    asyncio.run(other_loop())


def test_idle_checkout_and_release_enter_no_greenlet() -> None:
    """The usual cycle -- an idle connection inside the bypass window, returned clean --
    runs without the greenlet bridge (it cost 13 us per cycle); waits and pings use it."""

    async def body(pool: AsyncSmartRedisPool, name: str) -> None:
        r = aioredis.Redis(connection_pool=pool)
        assert await r.ping()  # opens one connection (through a greenlet)
        entered: list[Any] = []
        spawn = pool._spawn

        def counting(fn: Any, *args: Any) -> Any:
            entered.append(fn)
            return spawn(fn, *args)

        pool._spawn = counting  # type: ignore[method-assign]
        for _ in range(50):
            conn = await pool.get_connection()
            await pool.release(conn)
        assert await r.set(f"{name}:k", "v")
        assert entered == []
        # a connection with unread data is still caught on release, greenlet-free
        conn = await pool.get_connection()
        await conn.send_command("GET", f"{name}:k")
        assert await until(lambda: bool(conn._reader._buffer), 2.0)  # type: ignore[union-attr]
        await pool.release(conn)
        assert pool.stats().counters["connections_invalidated"] == 1
        assert entered == []
        # the replacement is opened and handed over through the engine's slow path
        assert await r.get(f"{name}:k") == b"v"
        assert entered

    run(body, min_size=1, max_size=1, validation_interval=60.0)


def test_black_holed_host_opens_the_breaker() -> None:
    """asyncio twin of the sync test: the handshake is bounded by connect_timeout."""

    async def main() -> None:
        require_redis()
        with FaultProxy(HOST, REDIS_PORT) as proxy:
            pool = AsyncSmartRedisPool(
                host=HOST,
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
            r = aioredis.Redis(connection_pool=pool)
            try:
                assert await r.ping()
                proxy.mode = FaultMode.BLACKHOLE
                proxy.reset_all()
                loop = asyncio.get_running_loop()
                errors: list[BaseException] = []
                slowest = 0.0
                down = loop.time()
                deadline = down + 15
                while loop.time() < deadline:
                    t0 = loop.time()
                    try:
                        await r.ping()
                    except redis.ConnectionError as err:
                        errors.append(err)
                        if isinstance(err, CircuitOpen):
                            break
                    finally:
                        slowest = max(slowest, loop.time() - t0)
                assert errors and isinstance(errors[-1], CircuitOpen), errors[-3:]
                # unbounded, redis-py's handshake held each connect ~10 s; bounded: < 1 s
                assert loop.time() - down < 3.0, f"breaker opened after {loop.time() - down:.1f}s"
                assert slowest < 3.0, f"a request took {slowest:.2f}s"
                proxy.mode = FaultMode.PASS

                async def recovered() -> bool:
                    try:
                        return bool(await r.ping())
                    except redis.ConnectionError:
                        return False

                ok = False
                while not ok and loop.time() < deadline + 10:
                    ok = await recovered()
                    if not ok:
                        await asyncio.sleep(0.05)
                assert ok and pool.stats().breaker_state == "closed"
            finally:
                await pool.aclose()

    asyncio.run(main())
