"""Housekeeper: timer ordering, cancel, bounded workers, stop(). Real threads, short waits.

Timing bounds are generous (seconds, not milliseconds): the machine is shared
and noisy. Every test stops its housekeeper and joins its threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from sqlalchemy_smartpool.sched import Housekeeper

WAIT = 5.0  # upper bound for "should happen soon"; tests normally pass in milliseconds


def threads_of(hk: Housekeeper) -> list[threading.Thread]:
    names = (f"smartpool-timer-{hk.name}", f"smartpool-worker-{hk.name}")
    return [t for t in threading.enumerate() if t.name in names]


def workers_of(hk: Housekeeper) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"smartpool-worker-{hk.name}"]


def wait_until(predicate: object, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return bool(predicate())  # type: ignore[operator]


def stop_and_join(hk: Housekeeper) -> None:
    threads = threads_of(hk)
    hk.stop()
    for t in threads:
        t.join(WAIT)
    assert not [t for t in threads if t.is_alive()], "housekeeper threads outlived stop()"


_names = iter(range(10**6))


@pytest.fixture
def hk() -> Iterator[Housekeeper]:
    keeper = Housekeeper(f"unit{next(_names)}", workers=2)
    yield keeper
    stop_and_join(keeper)


def test_nothing_runs_until_used() -> None:
    keeper = Housekeeper("lazy", workers=2)
    assert threads_of(keeper) == [] and keeper.alive and not keeper.stopped
    keeper.stop()


def test_timers_fire_in_deadline_order(hk: Housekeeper) -> None:
    fired: list[str] = []
    done = threading.Event()

    def last() -> None:
        fired.append("c")
        done.set()

    hk.call_later(0.15, last)
    hk.call_later(0.05, lambda: fired.append("a"))
    hk.call_later(0.10, lambda: fired.append("b"))
    hk.call_later(0.0, lambda: fired.append("now"))
    assert done.wait(WAIT)
    assert fired == ["now", "a", "b", "c"]


def test_equal_deadlines_fire_in_submission_order(hk: Housekeeper) -> None:
    fired: list[int] = []
    done = threading.Event()
    when = time.monotonic() + 0.05
    for i in range(5):
        hk.call_at(when, lambda i=i: fired.append(i))  # type: ignore[misc]
    hk.call_at(when, done.set)
    assert done.wait(WAIT)
    assert fired == [0, 1, 2, 3, 4]


def test_an_earlier_timer_wakes_the_timer_thread(hk: Housekeeper) -> None:
    early = threading.Event()
    hk.call_later(60, lambda: None)  # the thread now sleeps up to a minute
    start = time.monotonic()
    hk.call_later(0.01, early.set)
    assert early.wait(WAIT) and time.monotonic() - start < WAIT


def test_cancelled_timer_does_not_run(hk: Housekeeper) -> None:
    ran: list[str] = []
    done = threading.Event()
    timer = hk.call_later(0.02, lambda: ran.append("cancelled"))
    hk.call_later(0.08, done.set)
    timer.cancel()
    assert done.wait(WAIT)
    assert ran == [] and timer.cancelled


def test_a_failing_timer_does_not_kill_the_timer_thread(
    hk: Housekeeper, caplog: pytest.LogCaptureFixture
) -> None:
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("task bug")

    with caplog.at_level(logging.ERROR, logger="sqlalchemy_smartpool.sched"):
        hk.call_later(0.0, boom)
        hk.call_later(0.03, done.set)
        assert done.wait(WAIT)
    assert "housekeeping task failed" in caplog.text and "task bug" in caplog.text


def test_submit_runs_on_worker_threads_up_to_the_cap(hk: Housekeeper) -> None:
    release = threading.Event()
    lock = threading.Lock()
    running: list[str] = []
    peak = 0
    finished = threading.Semaphore(0)

    def job() -> None:
        nonlocal peak
        with lock:
            running.append(threading.current_thread().name)
            peak = max(peak, len(running))
        release.wait(WAIT)
        with lock:
            running.pop()
        finished.release()

    for _ in range(5):
        hk.submit(job)
    assert wait_until(lambda: len(running) == 2)
    time.sleep(0.05)  # give a third worker (there must be none) a chance to show up
    assert peak == 2 and len(workers_of(hk)) == 2
    assert set(running) == {f"smartpool-worker-{hk.name}"}
    release.set()
    for _ in range(5):
        assert finished.acquire(timeout=WAIT)
    assert len(workers_of(hk)) <= 2


def test_jobs_run_off_the_calling_thread(hk: Housekeeper) -> None:
    where: list[threading.Thread] = []
    done = threading.Event()

    def job() -> None:
        where.append(threading.current_thread())
        done.set()

    hk.submit(job)
    assert done.wait(WAIT) and where[0] is not threading.current_thread()


def test_a_failing_job_does_not_kill_the_worker(hk: Housekeeper, caplog: pytest.LogCaptureFixture) -> None:
    done = threading.Event()

    def boom() -> None:
        raise ValueError("job bug")

    with caplog.at_level(logging.ERROR, logger="sqlalchemy_smartpool.sched"):
        hk.submit(boom)
        assert wait_until(lambda: "background job failed" in caplog.text)
        hk.submit(done.set)
        assert done.wait(WAIT)
    assert "job bug" in caplog.text


def test_idle_workers_exit_and_come_back() -> None:
    keeper = Housekeeper("idle-exit", workers=2, worker_idle_exit=0.05)
    try:
        done = threading.Event()
        keeper.submit(done.set)
        assert done.wait(WAIT)
        assert wait_until(lambda: not workers_of(keeper)), "an idle worker should exit"
        again = threading.Event()
        keeper.submit(again.set)
        assert again.wait(WAIT), "a new worker must be spawned for new work"
    finally:
        stop_and_join(keeper)


def test_work_queued_behind_busy_workers_never_strands_later_jobs() -> None:
    keeper = Housekeeper("drift", workers=2, worker_idle_exit=0.1)
    try:
        gate = threading.Event()
        started = threading.Semaphore(0)

        def blocked() -> None:
            started.release()
            gate.wait(WAIT)

        keeper.submit(blocked)
        keeper.submit(blocked)
        assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
        ran = threading.Event()
        keeper.submit(lambda: None)  # queued behind the two busy workers
        gate.set()
        assert wait_until(lambda: not workers_of(keeper)), "both workers idle out"
        keeper.submit(ran.set)
        assert ran.wait(2.0), "the job was queued with no worker to run it"
    finally:
        stop_and_join(keeper)


def test_stop_ends_the_threads_and_is_idempotent() -> None:
    keeper = Housekeeper("stopper", workers=2)
    done = threading.Event()
    keeper.call_later(0.0, lambda: None)
    keeper.submit(done.set)
    assert done.wait(WAIT)
    assert threads_of(keeper), "a timer thread and a worker are running"
    stop_and_join(keeper)
    assert keeper.stopped and not keeper.alive
    keeper.stop()  # again: no error, nothing restarted
    assert threads_of(keeper) == []


def test_stop_lets_the_running_job_finish() -> None:
    keeper = Housekeeper("finish", workers=1)
    started, finished = threading.Event(), threading.Event()
    gate = threading.Event()

    def job() -> None:
        started.set()
        gate.wait(WAIT)
        finished.set()

    keeper.submit(job)
    assert started.wait(WAIT)
    keeper.stop()
    gate.set()
    assert finished.wait(WAIT)
    stop_and_join(keeper)


def test_after_stop_nothing_is_scheduled_or_run() -> None:
    keeper = Housekeeper("after", workers=1)
    keeper.stop()
    ran: list[str] = []
    timer = keeper.call_later(0.0, lambda: ran.append("timer"))
    keeper.submit(lambda: ran.append("job"))
    time.sleep(0.05)
    assert timer.cancelled and ran == [] and threads_of(keeper) == []


def test_stop_cancels_pending_timers() -> None:
    keeper = Housekeeper("pending", workers=1)
    ran: list[str] = []
    keeper.call_later(0.2, lambda: ran.append("late"))
    stop_and_join(keeper)
    time.sleep(0.3)
    assert ran == []


def test_cancelled_timers_are_swept_from_the_heap() -> None:
    """Every validation arms a watchdog and nearly all are cancelled; they must not
    pile up in the heap until their (distant) deadlines."""
    hk = Housekeeper("sweep", workers=1)
    try:
        for _ in range(10_000):
            hk.call_later(3600, lambda: None).cancel()
        assert len(hk._heap) < 200, len(hk._heap)
        live = hk.call_later(3600, lambda: None)
        assert any(entry[2] is live for entry in hk._heap)
    finally:
        hk.stop()
