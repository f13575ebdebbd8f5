#!/usr/bin/env bash
# Run a subset of SQLAlchemy's own engine tests with SmartPool in place of QueuePool, and its
# asyncio tests with AsyncSmartPool in place of AsyncAdaptedQueuePool.
#
#   tests/sqlalchemy_suite/run.sh                 # the subset, minus the known bugs below
#   tests/sqlalchemy_suite/run.sh --known-bugs    # only the known bugs (expected to fail)
#   extra arguments go to every pytest run, e.g. -x or -k test_reconnect
#
# Why: SmartPool replaces QueuePool under the Engine. SQLAlchemy's engine tests encode the
# contract the Engine expects from its pool (reset on return, invalidation, reconnect,
# pre-ping, events, transactions), so running them against SmartPool finds incompatibilities
# no test of ours would think of.
#
# How: the SQLAlchemy sdist (which ships test/ and its pytest plugin config) for the
# *installed* version is downloaded once into a cache dir and unpacked; pytest runs from
# there with `python -s` (so the installed SQLAlchemy is tested, not the sdist's lib/) and
# `-p smartpool_sa_plugin`, which makes SmartPool (AsyncSmartPool for asyncio dialects) the
# dialects' default pool class.
#
# Environment:
#   PYTHON                    interpreter with sqlalchemy-smartpool installed (default: python3)
#   SMARTPOOL_SA_CACHE        cache dir (default: ${XDG_CACHE_HOME:-~/.cache}/smartpool-sa-suite)
#   SMARTPOOL_SA_SDIST        path of a SQLAlchemy sdist tarball to use instead of downloading
#   SMARTPOOL_SA_BACKENDS     space-separated subset of "sqlite postgresql" (default: both)
#   SMARTPOOL_SA_PG_URL       PostgreSQL URL; its database (with schemas test_schema and
#                             test_schema_2, which the suite needs) is created when missing
#                             (default: a database of this run's own on postgres@127.0.0.1:5432,
#                             dropped at exit, so two runs side by side never share tables)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
MODE=suite
if [[ "${1:-}" == "--known-bugs" ]]; then
    MODE=known-bugs
    shift
fi
BACKENDS="${SMARTPOOL_SA_BACKENDS:-sqlite postgresql}"
OWN_DB=""
[[ -z "${SMARTPOOL_SA_PG_URL:-}" ]] && OWN_DB="smartpool_sa_suite_$$_$RANDOM"
PG_URL="${SMARTPOOL_SA_PG_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/$OWN_DB}"
pg_url_for() {  # the same database through another driver
    "$PY" -c 'import sys, sqlalchemy as sa; print(sa.make_url(sys.argv[1]).set(drivername="postgresql+" + sys.argv[2]).render_as_string(hide_password=False))' "$PG_URL" "$1"
}

VERSION="$("$PY" -c 'import sqlalchemy, sqlalchemy_smartpool; print(sqlalchemy.__version__)')"
CACHE="${SMARTPOOL_SA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smartpool-sa-suite}"
SRC="$CACHE/sqlalchemy-$VERSION"

# -- 1. the sdist of the installed version, unpacked once --------------------------------
if [[ ! -f "$SRC/test/conftest.py" ]]; then
    mkdir -p "$CACHE"
    TARBALL="${SMARTPOOL_SA_SDIST:-}"
    if [[ -z "$TARBALL" ]]; then
        "$PY" -m pip download --quiet --no-deps --no-binary :all: "sqlalchemy==$VERSION" -d "$CACHE/sdist"
        TARBALL="$(ls "$CACHE"/sdist/[sS][qQ][lL][aA]lchemy-"$VERSION".tar.gz)"
    fi
    TMP="$(mktemp -d "$CACHE/unpack.XXXXXX")"
    tar -xzf "$TARBALL" -C "$TMP"
    rm -rf "$SRC"
    mv "$TMP"/*-"$VERSION" "$SRC"  # atomic enough: a half-unpacked tree is never at $SRC
    rmdir "$TMP"
fi

# -- 2. what runs, and what is left out (and why) ------------------------------------------
ENGINE_TESTS=(test/engine/test_execute.py test/engine/test_transaction.py test/engine/test_reconnect.py)
# test_pool.py builds its pools directly; the plugin routes its QueuePool fixture to SmartPool
# for the classes that test the Pool API contract rather than QueuePool's own internals.
POOL_TESTS=(test/engine/test_pool.py)
POOL_SELECT="PoolEventsTest or ResetOnReturnTest or PoolFirstConnectSyncTest or PoolDialectTest or CreatorCompatibilityTest"
# asyncio: AsyncSmartPool in place of AsyncAdaptedQueuePool (test_session.py: the ORM on top)
ASYNC_TESTS=(test/ext/asyncio/test_engine.py test/ext/asyncio/test_session.py)

# Differences by design (not bugs):
BY_DESIGN=(
    # SmartPool passes connect_timeout=10 to the driver (PoolConfig.connect_timeout)
    "(MockReconnectTest and test_conn_reusable)"
    # pool-wide invalidation: SmartPool marks older connections suspect (validated before
    # reuse) instead of setting pool._invalidate_time and reconnecting in request threads
    "(MockReconnectTest and test_invalidate_conn_w_contextmanager_disconnect)"
    "(HandleErrorTest and test_alter_invalidate_pool_stays_true)"
    # asserts on engine.pool._pool (QueuePool's queue)
    "(MockReconnectTest and test_dialect_initialize_retry_if_exception)"
    # assert the exact DBAPI calls on a mock connection: SmartPool reads the server's
    # connection limit with one query on its first connection and asks each new connection
    # for its socket (fileno(), for the liveness look and the ping watchdog)
    "(DialectEventTest and (test_connect_do_connect or test_connect_replace_params))"
    "(ResetOnReturnTest and (test_custom_via_engine or test_plain_rollback_via_engine))"
    # validation bypass window (docs/design.md): a connection used < validation_interval ago
    # is pinged only if its socket shows something. This test fakes the disconnect in a
    # mocked ping (the socket stays healthy), so only a ping on every checkout can see it.
    # It runs below with validation_interval=0, where it must pass.
    "(RealPrePingEventHandlerTest)"
)
# sqlite has no socket to look at: PrePingRealTest's "restart" (the DBAPI connection closed
# under the pool) is invisible within the bypass window there; it runs with
# validation_interval=0 below. (On PostgreSQL it passes unchanged: the look sees the closed socket.)
BY_DESIGN_SQLITE=("(PrePingRealTest)")
# Fails with QueuePool too, on a file database only ("database is locked" in its teardown):
SQLITE_BASELINE="(InvalidateDuringResultTest)"
PRE_PING="(PrePingRealTest or RealPrePingEventHandlerTest)"
# Known SmartPool bugs (reported; left out of the suite; --known-bugs runs only these, and
# tests/integration/test_sqlalchemy_suite.py expects each to fail -- xfail(strict) -- so a
# fix shows up as an XPASS there and its entry here must go):
KNOWN_BUGS=(
    # pool_timeout=0 (or any acquire_timeout shorter than a connect): the first checkout of
    # an empty pool raises PoolTimeout, because the caller's deadline also bounds the
    # background connect it is waiting for; QueuePool connects in the caller, untimed
    "(AsyncEngineTest and test_pool_exhausted_no_timeout)"
)
join() { local IFS="|"; echo "$*" | sed 's/|/ or /g'; }
NOT_KNOWN="not ($(join "${KNOWN_BUGS[@]}"))"
SELECT="not ($(join "${BY_DESIGN[@]}")) and $NOT_KNOWN"
SELECT_SQLITE="$SELECT and not ($(join "${BY_DESIGN_SQLITE[@]}")) and not $SQLITE_BASELINE"

# -- 3. run --------------------------------------------------------------------------------
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
RUN_DIR="$(mktemp -d "$CACHE/run.XXXXXX")"
cleanup() {
    rm -rf "$RUN_DIR"
    if [[ -n "$OWN_DB" ]]; then
        "$PY" - "$PG_URL" <<'EOF' || true
import sys
import sqlalchemy as sa
url = sa.make_url(sys.argv[1])
admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
with admin.connect() as conn:
    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
EOF
    fi
}
trap cleanup EXIT
# a copy per run: SQLAlchemy's sqlite tests write their database files (test_schema.db, ...)
# into the working directory, and two runs side by side must not share them
cp -a "$SRC/test" "$SRC/lib" "$SRC"/*.cfg "$SRC"/*.toml "$SRC"/*.ini "$RUN_DIR/" 2>/dev/null || cp -a "$SRC/." "$RUN_DIR/"
cd "$RUN_DIR"
status=0
run() {
    local label="$1"
    shift
    echo "=== smartpool-sa-suite: $label ==="
    # -s: no user site, so test/conftest.py does not put the sdist's lib/ first on sys.path.
    # --timeout: each test (setup, call, teardown) gets 120 s; the thread method dumps every
    # stack and ends the run with an error even if the hang is inside a C call or a lock,
    # where a signal would never be handled. No limit applies to a whole run.
    "$PY" -s -m pytest -p smartpool_sa_plugin -p no:cacheprovider -q -rfE --tb=short \
        --timeout 120 --timeout-method thread "$@" || status=$?
}

engine_tests() {  # label, dburi, extra pytest args...
    local label="$1" uri="$2"
    shift 2
    [[ "$MODE" == "known-bugs" ]] && return  # no known bug in the sync engine tests
    local select="$SELECT"
    [[ "$uri" == sqlite* ]] && select="$SELECT_SQLITE"
    run "$label" "${ENGINE_TESTS[@]}" --dburi "$uri" -k "$select" "$@"
    SMARTPOOL_SUITE_VALIDATION_INTERVAL=0 run "$label: pre-ping with validation_interval=0" \
        test/engine/test_reconnect.py --dburi "$uri" -k "$PRE_PING" "$@"
}

async_tests() {  # label, dburi, extra pytest args...
    local label="$1" uri="$2"
    shift 2
    if [[ "$MODE" == "known-bugs" ]]; then
        run "$label: known bugs" "${ASYNC_TESTS[@]}" --dburi "$uri" -k "$(join "${KNOWN_BUGS[@]}")" "$@"
    else
        run "$label" "${ASYNC_TESTS[@]}" --dburi "$uri" -k "$SELECT" "$@"
    fi
}

for backend in $BACKENDS; do
    case "$backend" in
    sqlite)
        # relative to $RUN_DIR (the working directory): SQLAlchemy's provisioning rebuilds a
        # sqlite file name from its first "_"/"."-separated token, so an absolute path
        # becomes "/root/_pysqlite.db" -- one file in $HOME for every run side by side
        engine_tests "sqlite (file)" "sqlite:///querytest.db" "$@"
        async_tests "asyncio: sqlite+aiosqlite (file)" "sqlite+aiosqlite:///async_querytest.db" "$@"
        if [[ "$MODE" == "suite" ]]; then
            run "Pool API tests on SmartPool (mock DBAPI)" "${POOL_TESTS[@]}" -k "($POOL_SELECT) and $SELECT" "$@"
        fi
        ;;
    postgresql)
        "$PY" - "$PG_URL" <<'EOF'
import sys
import sqlalchemy as sa
url = sa.make_url(sys.argv[1])
admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
with admin.connect() as conn:
    if not conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %(d)s", {"d": url.database}).first():
        conn.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
db = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
with db.connect() as conn:
    for schema in ("test_schema", "test_schema_2"):
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
EOF
        # --dbdriver: the backend-sensitive tests run once per driver (psycopg2 and psycopg 3)
        engine_tests "postgresql" "$PG_URL" --dbdriver psycopg2 --dbdriver psycopg "$@"
        async_tests "asyncio: postgresql+asyncpg" "$(pg_url_for asyncpg)" "$@"
        ;;
    *)
        echo "unknown backend $backend" >&2
        exit 2
        ;;
    esac
done
exit "$status"
