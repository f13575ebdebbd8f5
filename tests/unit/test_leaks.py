"""Leak tracking: the captured call site, report-once, and the listing."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy

import sqlalchemy_smartpool
from sqlalchemy_smartpool import leaks
from sqlalchemy_smartpool.leaks import LeakReporter, Lease


class FakeSlot:
    def __init__(self, id: int, checked_out_at: float, lease: object | None) -> None:
        self.id = id
        self.checked_out_at = checked_out_at
        self.lease = lease


def _compiled(filename: str, body: str, name: str, env: dict[str, Any]) -> Callable[..., Any]:
    """A function whose frames claim to live in ``filename`` (what capture() looks at)."""
    code = compile(body, filename, "exec")
    namespace = dict(env)
    exec(code, namespace)
    return namespace[name]  # type: ignore[no-any-return]


def _through(filename: str, inner: Callable[[], Lease]) -> Callable[[], Lease]:
    return _compiled(filename, "def relay():\n    return inner()\n", "relay", {"inner": inner})


def test_capture_ends_with_the_caller() -> None:
    def checkout_site() -> Lease:
        return leaks.capture()

    lease = checkout_site()
    assert lease.thread == threading.current_thread().name
    filename, line, function = lease.stack[-1]
    assert filename == __file__ and function == "checkout_site" and line > 0
    assert lease.stack[-2][2] == "test_capture_ends_with_the_caller"
    assert lease.reported is False and lease.statement is None


def test_capture_skips_pool_and_sqlalchemy_frames() -> None:
    sa_file = os.path.join(os.path.dirname(sqlalchemy.__file__), "pool", "base.py")
    pool_file = os.path.join(os.path.dirname(sqlalchemy_smartpool.__file__), "pool.py")

    def user_code() -> Lease:
        # user -> sqlalchemy -> smartpool -> capture(), as a real checkout runs
        via_pool = _through(pool_file, leaks.capture)
        via_sa = _through(sa_file, via_pool)
        return via_sa()

    lease = user_code()
    files = [f for f, _, _ in lease.stack]
    assert sa_file not in files and pool_file not in files
    assert lease.stack[-1][:1] == (__file__,) and lease.stack[-1][2] == "user_code"


@pytest.mark.parametrize(
    "user_dir",
    [
        "/home/dev/learn_sqlalchemy",
        "/srv/app/my_sqlalchemy_smartpool",
        "/srv/app/tests/sqlalchemy",
    ],
)
def test_capture_keeps_user_files_whose_path_merely_mentions_sqlalchemy(user_dir: str) -> None:
    """Only the two packages' own frames are noise; a user's directory named like them
    must not erase the very call site the report is for."""
    user_file = f"{user_dir}/app.py"
    lease = _through(user_file, leaks.capture)()
    assert lease.stack[-1][0] == user_file


def test_capture_keeps_at_most_40_frames_nearest_the_checkout() -> None:
    def deep(n: int) -> Lease:
        return leaks.capture() if n == 0 else deep(n - 1)

    lease = deep(80)
    assert len(lease.stack) == 40
    assert all(fn == "deep" for _, _, fn in lease.stack)


def test_format_stack_reads_like_a_traceback() -> None:
    lease = Lease("worker-1", (("/app/a.py", 3, "main"), ("/app/b.py", 7, "handler")))
    assert lease.format_stack() == (
        '  File "/app/a.py", line 3, in main\n  File "/app/b.py", line 7, in handler\n'
    )


def test_note_statement_truncates_long_sql() -> None:
    lease = Lease("t", ())
    leaks.note_statement(lease, "SELECT 1")
    assert lease.statement == "SELECT 1"
    long_sql = "SELECT " + "x, " * 500
    leaks.note_statement(lease, long_sql)
    assert lease.statement == long_sql[: leaks.MAX_STATEMENT] + "..."


def test_reporter_reports_each_leak_once(caplog: pytest.LogCaptureFixture) -> None:
    reporter = LeakReporter("orders")
    lease = Lease("req-7", (("/app/views.py", 42, "handler"),))
    leaks.note_statement(lease, "UPDATE accounts SET x = 1")
    slot = FakeSlot(3, 100.0, lease)
    with caplog.at_level(logging.WARNING, logger="sqlalchemy_smartpool.leaks"):
        assert reporter.suspected(slot, 112.5) is True
        assert reporter.suspected(slot, 200.0) is False
    (record,) = caplog.records
    message = record.getMessage()
    for part in ("orders", "#3", "12.5s", "'req-7'", "/app/views.py", "line 42", "UPDATE accounts"):
        assert part in message, part


def test_reporter_ignores_slots_without_a_lease() -> None:
    reporter = LeakReporter("p")
    assert reporter.suspected(FakeSlot(1, 0.0, None), 10.0) is False
    assert reporter.suspected(FakeSlot(1, 0.0, "not a lease"), 10.0) is False


def test_returned_only_counts_reported_leases(caplog: pytest.LogCaptureFixture) -> None:
    reporter = LeakReporter("p")
    lease = Lease("t", ())
    slot = FakeSlot(9, 0.0, lease)
    assert reporter.returned(slot, lease, 5.0) is False
    reporter.suspected(slot, 5.0)
    with caplog.at_level(logging.INFO, logger="sqlalchemy_smartpool.leaks"):
        assert reporter.returned(slot, lease, 8.0) is True
    assert "came back after 8.0s" in caplog.text
    assert reporter.returned(slot, None, 8.0) is False


def test_collected_is_logged_with_the_checkout_site(caplog: pytest.LogCaptureFixture) -> None:
    reporter = LeakReporter("p")
    lease = Lease("t", (("/app/jobs.py", 5, "run"),))
    with caplog.at_level(logging.WARNING, logger="sqlalchemy_smartpool.leaks"):
        reporter.collected(FakeSlot(4, 1.0, lease), lease, 3.0)
        reporter.collected(FakeSlot(5, 1.0, None), None, 3.0)  # nothing known: nothing logged
    (record,) = caplog.records
    assert "#4 was never returned" in record.getMessage() and "/app/jobs.py" in record.getMessage()


def test_describe_lists_leased_slots_with_a_lease() -> None:
    lease = Lease("t1", (("/app/x.py", 1, "f"),))
    leaks.note_statement(lease, "SELECT 2")
    infos = leaks.describe([FakeSlot(1, 10.0, lease), FakeSlot(2, 10.0, None)], 25.0)
    assert infos == [leaks.LeakInfo(1, "t1", 15.0, lease.format_stack(), "SELECT 2")]


def _finalize_fairy(is_gc_cleanup: bool, probe: Callable[[], bool]) -> bool:
    """Named like SQLAlchemy's function that returns garbage-collected connections."""
    return probe()


def test_returned_by_gc_looks_at_sqlalchemys_finalizer() -> None:
    assert _finalize_fairy(True, leaks.returned_by_gc) is True
    assert _finalize_fairy(False, leaks.returned_by_gc) is False
    assert leaks.returned_by_gc() is False

    def nested(n: int) -> bool:
        return leaks.returned_by_gc() if n == 0 else nested(n - 1)

    assert _finalize_fairy(True, lambda: nested(10)) is False, "only a few frames up"


def test_returned_by_gc_on_a_shallow_stack() -> None:
    """A worker thread has only a few frames: the walk must stop at the top, not fail."""
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(leaks.returned_by_gc()))
    worker.start()
    worker.join(5)
    assert result == [False]


def test_capture_inside_a_greenlet_continues_in_the_greenlet_that_started_it() -> None:
    """An asyncio checkout runs in SQLAlchemy's greenlet: the call site above it is kept."""
    greenlet = pytest.importorskip("greenlet")
    captured: list[Lease] = []

    def in_greenlet() -> None:
        captured.append(leaks.capture())

    def caller_outside_the_greenlet() -> None:
        greenlet.greenlet(in_greenlet).switch()

    caller_outside_the_greenlet()
    functions = [fn for _, _, fn in captured[0].stack]
    assert functions[-1] == "in_greenlet"
    assert "caller_outside_the_greenlet" in functions
