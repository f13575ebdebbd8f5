"""The statement guard on PostgreSQL (psycopg2), MariaDB (PyMySQL) and SQLite.

1. What SQLAlchemy Core and the ORM emit for a realistic model -- DDL from
   ``create_all``, inserts with RETURNING and insertmanyvalues, executemany,
   upserts, CTEs (recursive too), JSON, eager loading, windows, unions,
   updates, deletes, strings with ``;``, ``--``, ``/*!`` and quotes both in bound
   parameters and rendered as literals -- is never blocked in ``enforce`` mode.
2. Fingerprints learned in ``detect`` mode from one run are an allow-list that
   passes another run with other data (other list lengths, batch sizes, values).
3. The injection corpus, pasted into string-built queries, is rejected before
   anything reaches the server: the canary table and its rows survive. A
   control shows the stacked payload really drops the table on PostgreSQL when
   the guard only detects.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sql_corpus import LEGIT, PAYLOADS, TEMPLATES
from sqlalchemy import orm

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool import guard as G

from ._services import require_mysql, require_postgres
from .conftest import EngineFactory, mysql_url, pg_url

pytestmark = pytest.mark.integration

KINDS = ["postgresql", "mariadb", "sqlite"]
NASTY = "Robert'); DROP TABLE students; -- /*! x */ # \\ \" ` $$ $t$ ;"


def _url(kind: str, app: str, tmp_path: Path) -> str:
    if kind == "postgresql":
        require_postgres()
        return pg_url(app)
    if kind == "mariadb":
        require_mysql()
        return mysql_url("pymysql")
    return f"sqlite:///{tmp_path / 'guard.db'}"


def make_model(suffix: str) -> tuple[sa.MetaData, dict[str, Any]]:
    """Users, addresses, orders, items and tags (many-to-many), with JSON and server defaults."""

    class Base(orm.DeclarativeBase):
        pass

    user_tags = sa.Table(
        f"g_user_tags_{suffix}",
        Base.metadata,
        sa.Column("user_id", sa.ForeignKey(f"g_users_{suffix}.id"), primary_key=True),
        sa.Column("tag_id", sa.ForeignKey(f"g_tags_{suffix}.id"), primary_key=True),
    )

    class User(Base):
        __tablename__ = f"g_users_{suffix}"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str] = orm.mapped_column(sa.String(120), index=True)
        email: orm.Mapped[str] = orm.mapped_column(sa.String(120), unique=True)
        profile: orm.Mapped[dict[str, Any]] = orm.mapped_column(sa.JSON, default=dict)
        # a server default whose literal holds ';' and '--'
        note: orm.Mapped[str] = orm.mapped_column(sa.String(60), server_default=sa.text("'a;b -- c'"))
        created: orm.Mapped[dt.datetime] = orm.mapped_column(server_default=sa.func.current_timestamp())
        addresses: orm.Mapped[list[Address]] = orm.relationship(back_populates="user", cascade="all")
        orders: orm.Mapped[list[Order]] = orm.relationship(back_populates="user", cascade="all")
        tags: orm.Mapped[list[Tag]] = orm.relationship(secondary=user_tags)

    class Address(Base):
        __tablename__ = f"g_addresses_{suffix}"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        user_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey(f"g_users_{suffix}.id"))
        street: orm.Mapped[str] = orm.mapped_column(sa.String(200))
        user: orm.Mapped[User] = orm.relationship(back_populates="addresses")

    class Order(Base):
        __tablename__ = f"g_orders_{suffix}"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        user_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey(f"g_users_{suffix}.id"))
        total: orm.Mapped[decimal.Decimal] = orm.mapped_column(sa.Numeric(10, 2))
        status: orm.Mapped[str] = orm.mapped_column(sa.String(20), default="new")
        parent_id: orm.Mapped[int | None] = orm.mapped_column(sa.ForeignKey(f"g_orders_{suffix}.id"))
        user: orm.Mapped[User] = orm.relationship(back_populates="orders")
        items: orm.Mapped[list[Item]] = orm.relationship(cascade="all")

    class Item(Base):
        __tablename__ = f"g_items_{suffix}"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        order_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey(f"g_orders_{suffix}.id"))
        sku: orm.Mapped[str] = orm.mapped_column(sa.String(40))
        qty: orm.Mapped[int]

    class Tag(Base):
        __tablename__ = f"g_tags_{suffix}"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str] = orm.mapped_column(sa.String(40), unique=True)

    return Base.metadata, {"User": User, "Address": Address, "Order": Order, "Item": Item, "Tag": Tag}


def _upsert(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> Any:
    name = engine.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(table).values(rows)
        return pg.on_conflict_do_update(index_elements=["name"], set_={"name": pg.excluded.name})
    if name == "mysql":
        from sqlalchemy.dialects.mysql import insert as my_insert

        my = my_insert(table).values(rows)
        return my.on_duplicate_key_update(name=my.inserted.name)
    from sqlalchemy.dialects.sqlite import insert as lite_insert

    lite = lite_insert(table).values(rows)
    return lite.on_conflict_do_update(index_elements=["name"], set_={"name": lite.excluded.name})


def workload(engine: sa.Engine, suffix: str, n: int) -> None:
    """What an application does with the model; ``n`` varies sizes (lists, batches, rows)."""
    metadata, m = make_model(suffix)
    User, Address, Order, Item, Tag = (m[k] for k in ("User", "Address", "Order", "Item", "Tag"))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with orm.Session(engine) as s:
            tags = [Tag(name=f"tag-{i}") for i in range(3)]
            users = [
                User(
                    name=NASTY if i == 0 else f"user {i}; -- not a comment",
                    email=f"u{i}-{n}@example.com",
                    profile={"city": "Lyon; DROP", "n": i, "tags": ["a--b", "c'd"]},
                    addresses=[Address(street=f"{i} rue de l'Église -- /* */") for _ in range(2)],
                    orders=[Order(total=decimal.Decimal("9.99") * (i + 1), items=[Item(sku="x;y", qty=i)])],
                    tags=tags[: 1 + i % 3],
                )
                for i in range(n)
            ]
            s.add_all(users)
            s.flush()  # INSERT ... RETURNING / insertmanyvalues
            s.commit()
            ids = [u.id for u in users]
            # ORM queries
            s.scalars(
                sa.select(User).options(orm.selectinload(User.addresses), orm.joinedload(User.tags))
            ).unique().all()
            s.scalars(sa.select(User).where(User.id.in_(ids[: n // 2 + 1]))).all()
            s.scalars(sa.select(User).where(User.name == NASTY)).one()
            s.scalars(sa.select(User).where(User.name.like("%; --%"), User.id.between(1, 10**6))).all()
            s.scalars(sa.select(User).where(User.profile["city"].as_string() == "Lyon; DROP")).all()
            s.get(User, ids[0])
            s.merge(User(id=ids[0], name="merged 'name'; --", email=f"m-{n}@example.com"))
            s.commit()
            sub = sa.select(Order.user_id, sa.func.sum(Order.total).label("spent")).group_by(Order.user_id)
            sub = sub.having(sa.func.count() >= 1).subquery()
            s.execute(sa.select(User.name, sub.c.spent).join(sub, sub.c.user_id == User.id)).all()
            rn = sa.func.row_number().over(partition_by=Order.user_id, order_by=Order.total.desc())
            s.execute(sa.select(Order.id, rn.label("rn"))).all()
            s.execute(sa.select(User.id).where(sa.exists().where(Address.user_id == User.id))).all()
            s.execute(
                sa.union_all(sa.select(User.name).where(User.id < 3), sa.select(Tag.name))
                .order_by("name")
                .limit(5)
                .offset(1)
            ).all()
            status = sa.case((Order.total > 10, "big"), else_=sa.literal("small; --"))
            s.execute(sa.select(Order.id, status, sa.func.coalesce(Order.parent_id, 0))).all()
            # CTEs, one recursive
            top = (
                sa.select(Order.id, Order.parent_id)
                .where(Order.parent_id.is_(None))
                .cte("tree", recursive=True)
            )
            top = top.union_all(sa.select(Order.id, Order.parent_id).join(top, Order.parent_id == top.c.id))
            s.execute(sa.select(top.c.id)).all()
            busy = sa.select(Order.user_id).where(Order.total > 1).cte("busy")
            s.execute(sa.select(User.name).where(User.id.in_(sa.select(busy.c.user_id)))).all()
            # bulk ORM update by primary key (executemany), update and delete statements
            s.execute(sa.update(User), [{"id": i, "name": f"renamed {i}; --"} for i in ids])
            s.execute(sa.update(Order).where(Order.total > 5).values(status="paid -- yes"))
            s.execute(sa.delete(Address).where(Address.street.like("0 %")))
            s.commit()
        with engine.begin() as c:
            # Core executemany, an upsert, literal_execute and literal_binds
            c.execute(
                sa.insert(Item.__table__),
                [{"order_id": 1, "sku": f"s;{i}--", "qty": i} for i in range(n * 3)],
            )
            c.execute(_upsert(engine, Tag.__table__, [{"name": "tag-0"}, {"name": f"new; -- {n}"}]))
            c.execute(
                sa.select(sa.literal(NASTY, literal_execute=True), User.id).where(User.id.in_(ids))
            ).all()
            lit = sa.select(User.id).where(
                User.email == "x'; DROP TABLE users; --", User.id.in_([1, 2, 3][: n % 3 + 1])
            )
            c.exec_driver_sql(str(lit.compile(engine, compile_kwargs={"literal_binds": True})))
            c.execute(sa.text("SELECT 1 /* a remark; with a semicolon */"))
            c.execute(sa.text("-- a report\nSELECT :v AS v"), {"v": "--; /*!"})
            c.execute(sa.select(sa.func.count()).select_from(User.__table__)).scalar_one()
    finally:
        metadata.drop_all(engine)


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.mark.parametrize("kind", KINDS)
def test_sqlalchemy_sql_is_never_blocked(
    kind: str, make_engine: EngineFactory, app_name: str, tmp_path: Path, suffix: str
) -> None:
    engine = make_engine(_url(kind, app_name, tmp_path), poolclass=SmartPool, max_size=4)
    guard = G.install_guard(engine, "enforce")
    workload(engine, suffix, 7)
    assert len(guard._caches[G.flavour_of(engine.dialect.name)]) >= 30  # it did see the statements
    assert guard.rejections == 0 and not guard.detections, guard.stats()
    assert engine.pool.stats().counters["guard_detections"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_learned_allowlist_passes_another_run(
    kind: str, make_engine: EngineFactory, app_name: str, tmp_path: Path, suffix: str
) -> None:
    url = _url(kind, app_name, tmp_path)
    engine = make_engine(url)
    learner = G.install_guard(engine, "detect")
    workload(engine, suffix, 5)
    path = tmp_path / "allow.json"
    learned = learner.save_allowlist(path)
    assert learned >= 30 and not learner.detections
    # another engine (its own first-connect queries), other sizes: the same fingerprints
    other = make_engine(url)
    guard = G.install_guard(other, "enforce", path)
    workload(other, suffix, 11)
    assert guard.rejections == 0, guard.stats()
    print(f"{kind}: {learned} fingerprints learned, second run passed")


# ------------------------------------------------------------------------ injection corpus

FLAVOUR = {"postgresql": "pg", "mariadb": "mysql", "sqlite": "sqlite"}


@pytest.mark.parametrize("kind", KINDS)
def test_injection_payloads_never_reach_the_server(
    kind: str, make_engine: EngineFactory, app_name: str, tmp_path: Path
) -> None:
    engine = make_engine(_url(kind, app_name, tmp_path), poolclass=SmartPool, max_size=2)
    name = f"users_{uuid.uuid4().hex[:8]}"
    flavour = FLAVOUR[kind]
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name VARCHAR(40), active INTEGER)")
        c.exec_driver_sql(f"INSERT INTO {name} VALUES (1, 'admin', 1), (2, 'alice', 1)")
    try:
        legit = G.StatementGuard("detect")
        for context in TEMPLATES:
            legit.check(LEGIT[context].replace("FROM users", f"FROM {name}"), flavour)
        allow = set(legit.learned)
        rules = G.install_guard(engine, "enforce")
        mine = [p for p in PAYLOADS if flavour in p.flavours]
        for p in (p for p in mine if p.expect == "rule"):
            with engine.connect() as c, pytest.raises(G.StatementRejected):
                c.exec_driver_sql(p.statement(name))
        assert rules.rejections == sum(p.expect == "rule" for p in mine)
        strict = G.install_guard(
            engine, "enforce", allow | {G.scan(f"SELECT count(*) FROM {name}", flavour).fingerprint}
        )
        for p in mine:
            with engine.connect() as c, pytest.raises(G.StatementRejected):
                c.exec_driver_sql(p.statement(name))
        with engine.connect() as c:  # the legitimate queries still run
            for context in TEMPLATES:
                c.exec_driver_sql(LEGIT[context].replace("FROM users", f"FROM {name}")).all()
            assert c.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one() == 2
        assert strict.rejections == len(mine)
        counters = engine.pool.stats().counters
        assert counters["guard_rejections"] == rules.rejections + strict.rejections
        assert counters["guard_detections"] == counters["guard_rejections"]
    finally:
        G.uninstall_guard(engine)
        with engine.begin() as c:
            c.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")


def test_control_detect_mode_lets_a_stacked_drop_through(
    make_engine: EngineFactory, app_name: str, tmp_path: Path
) -> None:
    """Why ``enforce`` exists: psycopg2 sends stacked statements, and PostgreSQL runs them."""
    engine = make_engine(_url("postgresql", app_name, tmp_path), poolclass=SmartPool, max_size=2)
    name = f"canary_{uuid.uuid4().hex[:8]}"
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE {name} (id INTEGER, name TEXT)")
    guard = G.install_guard(engine, "detect")
    try:
        with engine.begin() as c:
            c.exec_driver_sql(TEMPLATES["number"].format(f"1; DROP TABLE {name} --").replace("users", name))
        assert guard.detections["stacked"] == 1
        assert not sa.inspect(engine).has_table(name), (
            "the stacked DROP did not run: the control shows nothing"
        )
    finally:
        with engine.begin() as c:
            c.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
