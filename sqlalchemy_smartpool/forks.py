"""Fork safety for every pool: a forked child starts clean and never touches the parent's sockets.

After ``os.fork()`` the child holds copies of the parent's pools: the same
sockets (shared with the parent: one byte written by the child lands in the
parent's session), locks possibly held by threads that do not exist in the
child, and no housekeeper thread. redis-py answers with a pid check on every
call; a SQLAlchemy checkout is about a microsecond, and ``os.getpid()`` would
be a noticeable share of it. So the work is done once, at the fork:
:func:`os.register_at_fork` runs :func:`after_fork_in_child` in the child,
which tells every live pool engine (a :class:`weakref.WeakSet`, so nothing is
kept alive by being registered) to forget its connections and start over.
The checkout path pays nothing.

What "forget" means, in the child, for every connection the parent had
(idle or checked out):

* **nothing is sent on it.** Its socket descriptor is pointed at a dead
  socket (:func:`quarantine`: ``dup2`` of one end of a socketpair whose other
  end is closed). Whatever the child's code, a driver's finalizer or the
  interpreter's shutdown does with the connection -- a rollback, a ``QUIT``,
  a TLS alert -- fails in the child with a broken pipe or reads EOF; the
  parent's socket (its own descriptor of the same connection) is untouched.
  mysqlclient, for one, sends ``COM_QUIT`` when a connection object is
  garbage collected, without a pid check; that kills the parent's session.
* **it is never collected** during the child's life: it is kept in
  :data:`orphans` (so no driver finalizer runs before the interpreter exits).
* **it is never pooled again**: the engine gets a fresh core, a fresh lock
  (the parent's may have been held by a thread that is gone) and no runtime;
  the housekeeper starts lazily at the child's first checkout, as in a new
  process. A connection the parent had checked out and the child returns is
  dropped (the adapter makes it inert: see ``forget`` in the backends).

This module imports neither SQLAlchemy nor redis. Forks made by C code that
skips Python's at-fork hooks (uWSGI without ``py-call-osafterfork``) must call
:func:`after_fork_in_child` themselves (see docs/forking.md).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import weakref
from typing import Protocol

logger = logging.getLogger("sqlalchemy_smartpool.forks")


class Forkable(Protocol):
    """Something that must start clean in a forked child (a pool engine, a Redis pool)."""

    def _after_fork_in_child(self) -> None: ...


#: every live object to reset in a child; weak, so registering keeps nothing alive
_live: weakref.WeakSet[Forkable] = weakref.WeakSet()
#: what the parent owned, kept alive in the child so no finalizer ever runs on it
orphans: list[object] = []
#: this process's pid as of the last fork hook (a read without a syscall)
pid = os.getpid()
#: how many forks this process descends from (0 in the original process)
generation = 0

_dead: socket.socket | None = None


def register(obj: Forkable) -> None:
    """Reset ``obj`` (call its ``_after_fork_in_child``) in every child forked from now on."""
    _live.add(obj)


def keep(*objs: object) -> None:
    """Keep ``objs`` alive for the rest of this (child) process: the parent's, never collected here."""
    orphans.extend(objs)


def quarantine(fd: int | None) -> bool:
    """In a child: point ``fd`` at a dead socket, so nothing the child does reaches the parent's peer.

    Only a socket descriptor is replaced (anything else is left alone, in case
    a driver reported a stale number). The parent keeps its own descriptor of
    the same connection, which this does not affect; the child's copy is
    released at once, so the connection closes when the parent closes it.
    Returns whether ``fd`` was replaced.
    """
    global _dead
    if fd is None or fd < 0:
        return False
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        if _dead is None:
            _dead, peer = socket.socketpair()
            peer.close()  # reads see EOF, writes get EPIPE: a connection whose server went away
        os.dup2(_dead.fileno(), fd, inheritable=False)
    except OSError:
        return False
    return True


def after_fork_in_child() -> None:
    """Reset every registered pool for this (child) process; run by ``os.fork()`` itself.

    Call it yourself right after a fork that skips Python's at-fork hooks
    (uWSGI without ``py-call-osafterfork``: ``uwsgidecorators.postfork``).
    Does nothing in a process that was not forked since the last reset (a
    second call in the same child, a call in the original process).
    """
    global pid, generation, _dead
    now = os.getpid()
    if now == pid:
        return
    pid = now
    generation += 1
    _dead = None
    try:
        for obj in list(_live):  # a strong copy: an object replaced by another's reset still runs
            try:
                obj._after_fork_in_child()
            except Exception:  # a bug: one pool failing must not leave the others shared
                logger.exception("fork safety: resetting %r in the child failed", obj)
    finally:
        dead, _dead = _dead, None
        if dead is not None:
            dead.close()  # the quarantined descriptors keep the dead socket open


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX CPython
    os.register_at_fork(after_in_child=after_fork_in_child)
