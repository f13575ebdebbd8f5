"""forks.py and the engine's fork hook, without servers: quarantine, the registry, a real fork.

The integration suite (tests/integration/test_fork.py) forks with live pools
on PostgreSQL, MariaDB and Redis; here are the pieces: what quarantine does
to a descriptor (and does not do to the parent's copy), that registering
keeps nothing alive, that the hook runs in a child and nowhere else, and what
the engine's reset leaves behind.
"""

from __future__ import annotations

import gc
import os
import socket
import tempfile
import threading
from typing import Any

import pytest

from sqlalchemy_smartpool import forks
from sqlalchemy_smartpool.config import PoolConfig
from sqlalchemy_smartpool.engine import PoolEngine
from sqlalchemy_smartpool.errors import NEUTRAL

from .conftest import Conn, FakeClock
from .test_engine import FakeRuntime


def test_quarantine_cuts_this_descriptor_off_and_leaves_the_other_copy() -> None:
    ours, peer = socket.socketpair()
    parents = os.dup(ours.fileno())  # stands for the parent's descriptor of the same socket
    try:
        assert forks.quarantine(ours.fileno())
        with pytest.raises(OSError):  # EPIPE: the dead socket's peer is closed
            ours.send(b"ROLLBACK")
        assert ours.recv(16) == b""  # reads see EOF, as from a server that went away
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(16)  # nothing the child wrote arrived
        os.write(parents, b"ok")  # the parent's copy still talks to the peer
        peer.setblocking(True)
        assert peer.recv(16) == b"ok"
    finally:
        forks._dead = None
        os.close(parents)
        ours.close()
        peer.close()


def test_quarantine_leaves_anything_but_a_socket_alone() -> None:
    r, w = os.pipe()
    try:
        assert not forks.quarantine(w)
        os.write(w, b"x")
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
        os.close(w)
    with tempfile.TemporaryFile() as f:
        assert not forks.quarantine(f.fileno())
    assert not forks.quarantine(None)
    assert not forks.quarantine(-1)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    assert not forks.quarantine(fd)  # closed: fstat fails


class Probe:
    def __init__(self) -> None:
        self.calls = 0

    def _after_fork_in_child(self) -> None:
        self.calls += 1


def test_registering_keeps_nothing_alive() -> None:
    probe = Probe()
    forks.register(probe)
    assert probe in forks._live
    del probe
    gc.collect()
    assert not any(isinstance(o, Probe) for o in forks._live)


def test_the_hook_does_nothing_in_a_process_that_did_not_fork() -> None:
    probe = Probe()
    forks.register(probe)
    forks.after_fork_in_child()
    assert probe.calls == 0


def _in_child(check: Any) -> int:
    """Fork, run ``check()`` in the child (exit code 0 if true), return the child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_os_fork_runs_the_hook_once_in_the_child_only() -> None:
    probe = Probe()
    forks.register(probe)
    before = forks.generation

    def check() -> bool:
        forks.after_fork_in_child()  # a second call (uWSGI postfork, say) is a no-op
        return probe.calls == 1 and forks.pid == os.getpid() and forks.generation == before + 1

    assert _in_child(check) == 0
    assert probe.calls == 0 and forks.pid == os.getpid() and forks.generation == before


def test_one_failing_reset_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def _after_fork_in_child(self) -> None:
            raise RuntimeError("boom")

    broken, probe = Broken(), Probe()
    forks.register(broken)
    forks.register(probe)
    assert _in_child(lambda: probe.calls == 1) == 0


# -------------------------------------------------------------------- the engine's reset


class SocketBackend:
    """A backend whose connections are socketpairs; records what the reset asks of it."""

    def __init__(self) -> None:
        self.socks: dict[int, tuple[socket.socket, socket.socket]] = {}
        self.forgotten: list[Conn] = []
        self.closed: list[Conn] = []

    def open(self) -> Conn:
        conn = Conn()
        self.socks[conn.n] = socket.socketpair()
        return conn

    def close(self, conn: Conn, reason: BaseException | None = None) -> None:
        self.closed.append(conn)

    def ping(self, conn: Conn) -> bool:
        return True

    def is_transient(self, err: BaseException) -> bool:
        return True

    def is_permanent(self, err: BaseException) -> bool:
        return False

    def socket_fd(self, conn: Conn) -> int | None:
        return self.socks[conn.n][0].fileno()

    def server_limit(self, conn: Conn) -> int | None:
        return None

    def closed_probe(self, conn: Conn) -> Any:
        return None

    def forget(self, conn: Conn) -> None:
        self.forgotten.append(conn)


def test_engine_reset_forgets_without_closing_and_starts_clean(clock: FakeClock) -> None:
    backend = SocketBackend()
    rt = FakeRuntime(clock)
    config = PoolConfig(min_size=2, max_size=4, barge_window=0.0, validate_on_checkout=False)
    engine: PoolEngine[Conn] = PoolEngine(
        config, backend, name="fork", errors=NEUTRAL, runtime=lambda name, workers: rt, clock=clock
    )
    engine.wait_ready(5)
    held = engine.checkout()
    idle = [s.conn for s in engine.core.idle]
    assert engine.core.size == 2 and len(idle) == 1
    old_lock, old_core = engine._lock, engine.core
    taken = threading.Event()
    threading.Thread(target=lambda: (old_lock.acquire(), taken.set()), daemon=True).start()
    assert taken.wait(5)  # a thread that "does not exist in the child" holds the old lock

    engine._after_fork_in_child()  # what forks runs in a child

    assert engine._lock is not old_lock and engine._acquire(timeout=1)
    engine._release()
    assert engine.core is not old_core
    assert engine.core.size == 0 and not engine.core.idle and not engine.core.leased
    assert engine._rt is None and not engine.core.refill  # dials nobody until used
    assert sorted(c.n for c in backend.forgotten) == sorted(c.n for c in [held, *idle])
    assert backend.closed == []  # nothing closed
    assert old_core in forks.orphans  # the parent's connections stay referenced
    for conn in [held, *idle]:  # their sockets are cut off in "the child"
        ours, _peer = backend.socks[conn.n]
        assert ours.recv(1) == b""
    new = engine.checkout()  # a fresh connection of the child's own
    assert new not in (held, *idle) and engine.core.size >= 1
    forks.orphans.clear()
    forks._dead = None


def test_a_closed_engine_stays_closed_in_the_child(clock: FakeClock) -> None:
    rt = FakeRuntime(clock)
    engine: PoolEngine[Conn] = PoolEngine(
        PoolConfig(min_size=0, max_size=2),
        SocketBackend(),
        name="fork",
        errors=NEUTRAL,
        runtime=lambda name, workers: rt,
        clock=clock,
    )
    engine.close()
    engine._after_fork_in_child()
    assert engine.core.closed
    forks.orphans.clear()
