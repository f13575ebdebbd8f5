"""Per-statement cost of the statement guard (docs/guard.md), as pytest-benchmark groups.

No server: the statements are what SQLAlchemy compiles for a small ORM model on
the PostgreSQL dialect (selects with joins and eager loads, inserts with
RETURNING, updates, an upsert, a CTE). ``guard-cached`` is the cost paid on
every execution (SQLAlchemy reuses compiled strings, and the guard caches its
verdict per string): goal <= 5 us. ``guard-scan`` is the first sight of a
statement (lexing and fingerprinting). ``guard-execute`` is SQLite's
``SELECT 1`` through a Connection with and without the guard: the whole
overhead, SQLAlchemy's event dispatch included.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql

from sqlalchemy_smartpool import guard as G


class Base(orm.DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(50))
    email: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    addresses: orm.Mapped[list[Address]] = orm.relationship()


class Address(Base):
    __tablename__ = "addresses"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    user_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("users.id"))
    street: orm.Mapped[str] = orm.mapped_column(sa.String(200))


def typical_statements() -> list[str]:
    d = postgresql.dialect()
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    up = pg_insert(User).values(name="x", email="y")
    cte = sa.select(Address.user_id).where(Address.street.like("%x%")).cte("c")
    stmts: list[Any] = [
        sa.select(User).where(User.id == 5),
        sa.select(User).join(User.addresses).where(Address.street == "x").order_by(User.name).limit(10),
        sa.select(User).options(orm.selectinload(User.addresses)).where(User.id.in_([1, 2, 3])),
        sa.insert(User).values(name="a", email="b").returning(User.id),
        sa.update(User).where(User.id == 1).values(name="n"),
        sa.delete(Address).where(Address.user_id == 3),
        up.on_conflict_do_update(index_elements=["id"], set_={"name": up.excluded.name}),
        sa.select(User.name).where(User.id.in_(sa.select(cte.c.user_id))),
    ]
    return [str(s.compile(dialect=d)) for s in stmts]


STATEMENTS = typical_statements()


@pytest.mark.benchmark(group="guard-cached")
def test_guard_check_cached(benchmark: Any) -> None:
    guard = G.StatementGuard("enforce")
    for s in STATEMENTS:
        guard.check(s)
    cycle = itertools.cycle(STATEMENTS)
    check = guard.check
    benchmark(lambda: check(next(cycle)))
    assert guard.rejections == 0


@pytest.mark.benchmark(group="guard-cached")
def test_guard_check_cached_detect_learning(benchmark: Any) -> None:
    guard = G.StatementGuard("detect")
    cycle = itertools.cycle(STATEMENTS)
    check = guard.check
    benchmark(lambda: check(next(cycle)))
    assert not guard.detections and len(guard.learned) == len(STATEMENTS)


@pytest.mark.benchmark(group="guard-scan")
def test_guard_scan_uncached(benchmark: Any) -> None:
    cycle = itertools.cycle(STATEMENTS)
    benchmark(lambda: G.scan(next(cycle)))


@pytest.fixture
def sqlite_engine() -> Any:
    engine = sa.create_engine("sqlite://")
    yield engine
    engine.dispose()


@pytest.mark.benchmark(group="guard-execute")
def test_execute_without_guard(benchmark: Any, sqlite_engine: Any) -> None:
    with sqlite_engine.connect() as c:
        benchmark(lambda: c.exec_driver_sql("SELECT 1"))


@pytest.mark.benchmark(group="guard-execute")
def test_execute_with_guard(benchmark: Any, sqlite_engine: Any) -> None:
    G.install_guard(sqlite_engine, "enforce")
    with sqlite_engine.connect() as c:
        benchmark(lambda: c.exec_driver_sql("SELECT 1"))
