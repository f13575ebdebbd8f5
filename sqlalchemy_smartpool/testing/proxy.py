"""A fault-injecting TCP proxy for testing code against a misbehaving network.

Put :class:`FaultProxy` between a client and a real PostgreSQL / MariaDB /
Redis server, point the client at ``proxy.url_for(url)`` and flip
:attr:`FaultProxy.mode`, :attr:`~FaultProxy.latency`,
:attr:`~FaultProxy.connect_delay` or call :meth:`~FaultProxy.reset_all` while
the application runs.  Real servers plus an injected fault reproduce what a
mock cannot: driver timeouts, half-read protocol messages, pool invalidation.

Standard library only, so it can ship inside the package.  One asyncio event
loop in a daemon thread drives every connection with low-level protocols
(no per-connection threads, no busy loops), which keeps PASS-mode overhead
to a few tens of microseconds per round trip.

Example::

    with FaultProxy("127.0.0.1", 5432) as proxy:
        engine = create_engine(proxy.url_for("postgresql://postgres@127.0.0.1/test"))
        proxy.mode = FaultMode.BLACKHOLE     # queries now hang
        proxy.mode = FaultMode.PASS          # ... and complete
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import logging
import math
import os
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["FaultMode", "FaultProxy"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Bytes held per direction (latency queue or BLACKHOLE) before the proxy stops
# reading the sender: bounds memory and gives the sender real TCP backpressure.
_HIGH_WATER = 1 << 20
_LOW_WATER = _HIGH_WATER // 4
# Deliver a delayed chunk if its due time is this close; avoids re-arming a
# timer for a sub-resolution remainder.
_TIME_SLACK = 5e-4
_CALL_TIMEOUT = 10.0
_READ_SIZE = 256 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)

_CLIENT = 0
_UPSTREAM = 1


class FaultMode(str, enum.Enum):
    """What the proxy does with traffic."""

    PASS = "pass"
    """Forward normally."""
    REFUSE = "refuse"
    """New connections are accepted and immediately reset (RST); open ones keep working."""
    BLACKHOLE = "blackhole"
    """Nothing is forwarded, new or open connections; held bytes flow again on PASS."""


class _Marker(enum.Enum):
    """Stream events queued in order with the data they follow."""

    EOF = "eof"  # sender half-closed: half-close the receiver
    CLOSE = "close"  # sender went away: close the receiver gracefully
    RESET = "reset"  # sender was reset: reset the receiver


def _set_rst_on_close(transport: asyncio.BaseTransport) -> None:
    """Make closing ``transport`` send RST instead of FIN (SO_LINGER 0)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


def _check_seconds(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


class _Pipe:
    """One direction of a link: ordered, optionally delayed, freezable delivery.

    Chunks go straight to the receiver when nothing is queued, there is no
    latency and the proxy is not frozen (the hot path).  Otherwise they queue
    with a due time that never goes backwards, so order survives a latency
    change, and a single timer per direction drains the queue.
    """

    __slots__ = ("dst", "last_due", "link", "queue", "queued_bytes", "src", "timer")

    def __init__(self, link: _Link, src: int, dst: int) -> None:
        self.link = link
        self.src = src
        self.dst = dst
        self.queue: collections.deque[tuple[float, bytes | _Marker]] = collections.deque()
        self.queued_bytes = 0
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def push(self, item: bytes | _Marker) -> None:
        link = self.link
        if link.closed:
            return
        latency = link.proxy._latency
        if not self.queue and latency <= 0 and isinstance(item, bytes) and link.can_deliver(self.dst):
            transport = link.transports[self.dst]
            assert transport is not None
            transport.write(item)
            return
        due = max(link.loop.time() + latency, self.last_due)
        self.last_due = due
        self.queue.append((due, item))
        if isinstance(item, bytes):
            self.queued_bytes += len(item)
            if self.queued_bytes > _HIGH_WATER:
                link.block_reading(self.src, "backlog")
        self.schedule()

    def schedule(self) -> None:
        """Deliver what is due now and arm the timer for the rest."""
        if self.timer is None and self.queue:
            self.flush()

    def _on_timer(self) -> None:
        self.timer = None
        try:
            self.flush()
        except Exception:
            logger.exception("fault proxy: error while forwarding; resetting connection")
            self.link.abort(rst=True)

    def flush(self) -> None:
        # Iterative on purpose: the clock advances while draining, and
        # re-entering per newly due chunk could recurse without bound.
        link = self.link
        if link.closed or not link.can_deliver(self.dst):
            return
        transport = link.transports[self.dst]
        assert transport is not None
        loop = link.loop
        queue = self.queue
        while queue:
            due, item = queue[0]
            if due > loop.time() + _TIME_SLACK:
                if self.timer is None:
                    self.timer = loop.call_at(due, self._on_timer)
                break
            queue.popleft()
            if isinstance(item, bytes):
                self.queued_bytes -= len(item)
                transport.write(item)
            else:
                link.deliver_marker(self.dst, item)
                if link.closed:
                    return
        if self.queued_bytes <= _LOW_WATER:
            link.unblock_reading(self.src, "backlog")

    def clear(self) -> None:
        self.cancel_timer()
        self.queue.clear()
        self.queued_bytes = 0

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Link:
    """A proxied client connection and its upstream connection (loop thread only)."""

    __slots__ = (
        "closed",
        "connect_task",
        "eofs_delivered",
        "loop",
        "lost",
        "pipes",
        "proxy",
        "read_blocks",
        "transports",
    )

    def __init__(self, proxy: FaultProxy, loop: asyncio.AbstractEventLoop, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.loop = loop
        self.transports: list[asyncio.Transport | None] = [client, None]
        self.lost = [False, False]
        self.pipes = (_Pipe(self, _CLIENT, _UPSTREAM), _Pipe(self, _UPSTREAM, _CLIENT))
        self.read_blocks: tuple[set[str], set[str]] = (set(), set())
        self.eofs_delivered = 0
        self.closed = False
        self.connect_task: asyncio.Task[None] | None = None

    # -- state ---------------------------------------------------------------

    def can_deliver(self, side: int) -> bool:
        transport = self.transports[side]
        return (
            transport is not None
            and not self.lost[side]
            and not self.proxy._frozen
            and not transport.is_closing()
        )

    def block_reading(self, side: int, reason: str) -> None:
        blocks = self.read_blocks[side]
        transport = self.transports[side]
        if not blocks and transport is not None and not transport.is_closing():
            transport.pause_reading()
        blocks.add(reason)

    def unblock_reading(self, side: int, reason: str) -> None:
        blocks = self.read_blocks[side]
        if reason not in blocks:
            return
        blocks.discard(reason)
        transport = self.transports[side]
        if not blocks and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def wake(self) -> None:
        """Deliver whatever became deliverable (after unfreezing or connecting)."""
        for pipe in self.pipes:
            pipe.schedule()

    # -- upstream ------------------------------------------------------------

    async def open_upstream(self) -> None:
        """Connect upstream after ``connect_delay``; wait while BLACKHOLE."""
        proxy = self.proxy
        try:
            delay = proxy._connect_delay
            if delay > 0:
                await asyncio.sleep(delay)
            while proxy._frozen:
                assert proxy._unfrozen is not None
                await proxy._unfrozen.wait()
            if proxy._applied_mode is FaultMode.REFUSE:
                self.abort(rst=True)
                return
            await self.loop.create_connection(
                lambda: _Side(proxy, self, _UPSTREAM), proxy.upstream_host, proxy.upstream_port
            )
        except OSError as exc:
            logger.debug("fault proxy: upstream connect failed: %s", exc)
            self.abort(rst=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("fault proxy: upstream connect failed")
            self.abort(rst=True)

    def attach_upstream(self, transport: asyncio.Transport) -> None:
        self.connect_task = None
        self.transports[_UPSTREAM] = transport
        if self.read_blocks[_UPSTREAM]:
            transport.pause_reading()
        self.wake()

    # -- events from the sockets ---------------------------------------------

    def on_eof(self, side: int) -> None:
        # Forwarded even before upstream is connected: FIN may be a half-close
        # after a complete request, and TCP cannot tell it from a full close.
        self.pipes[side].push(_Marker.EOF)

    def on_lost(self, side: int, exc: Exception | None) -> None:
        self.lost[side] = True
        if self.closed:
            return
        other = 1 - side
        self.pipes[other].clear()  # nowhere to deliver it any more
        if self.transports[other] is None or self.lost[other]:
            self.close()  # nobody left to tell
            return
        self.pipes[side].push(_Marker.RESET if exc is not None else _Marker.CLOSE)

    def deliver_marker(self, dst: int, marker: _Marker) -> None:
        if marker is _Marker.RESET:
            self.abort(rst=True)
        elif marker is _Marker.CLOSE:
            self.close()
        else:
            transport = self.transports[dst]
            assert transport is not None
            self.eofs_delivered += 1
            if self.eofs_delivered >= 2 or not transport.can_write_eof():
                self.close()
            else:
                transport.write_eof()

    # -- teardown ------------------------------------------------------------

    def _detach(self) -> bool:
        if self.closed:
            return False
        self.closed = True
        self.proxy._links.discard(self)
        for pipe in self.pipes:
            pipe.clear()
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        return True

    def close(self) -> None:
        """Close both sides after flushing what was already written."""
        if self._detach():
            for transport in self.transports:
                if transport is not None:
                    transport.close()

    def abort(self, *, rst: bool) -> None:
        """Close both sides now, discarding buffers; with ``rst`` the peers see a reset."""
        if self._detach():
            for transport in self.transports:
                if transport is not None:
                    if rst:
                        _set_rst_on_close(transport)
                    transport.abort()


class _Side(asyncio.BufferedProtocol):
    """Protocol for one socket of a link; forwards events to the :class:`_Link`.

    A buffered protocol reading into the proxy's shared buffer: plain
    ``Protocol`` makes asyncio allocate a fresh 256 KiB bytes object per
    ``recv`` (an mmap/munmap pair), measurably slowing every round trip.
    Sharing is safe because every read is consumed synchronously on the
    single loop thread.

    Exceptions are contained here so that a bug or odd socket state in one
    connection resets that connection only.
    """

    __slots__ = ("link", "proxy", "side", "transport")

    def __init__(self, proxy: FaultProxy, link: _Link | None, side: int) -> None:
        self.proxy = proxy
        self.link = link
        self.side = side
        self.transport: asyncio.Transport | None = None

    def _fail(self) -> None:
        logger.exception("fault proxy: error in connection handler; resetting connection")
        if self.link is not None:
            self.link.abort(rst=True)
        elif self.transport is not None:
            _set_rst_on_close(self.transport)
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        proxy = self.proxy
        proxy._transports.add(transport)
        try:
            if self.side == _UPSTREAM:
                assert self.link is not None
                if self.link.closed:
                    transport.abort()
                else:
                    self.link.attach_upstream(transport)
                return
            proxy._total_accepted += 1
            if proxy._applied_mode is FaultMode.REFUSE:
                _set_rst_on_close(transport)
                transport.abort()
                return
            link = _Link(proxy, asyncio.get_running_loop(), transport)
            self.link = link
            proxy._links.add(link)
            link.connect_task = link.loop.create_task(link.open_upstream())
        except Exception:
            self._fail()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.proxy._read_view

    def buffer_updated(self, nbytes: int) -> None:
        if self.link is None:
            return
        try:
            self.link.pipes[self.side].push(bytes(self.proxy._read_view[:nbytes]))
        except Exception:
            self._fail()

    def eof_received(self) -> bool:
        if self.link is None:
            return False
        try:
            self.link.on_eof(self.side)
        except Exception:
            self._fail()
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.proxy._transports.discard(self.transport)
        if self.link is None:
            return
        try:
            self.link.on_lost(self.side, exc)
        except Exception:
            self._fail()

    def pause_writing(self) -> None:
        if self.link is not None:
            self.link.block_reading(1 - self.side, "peer-full")

    def resume_writing(self) -> None:
        if self.link is not None:
            self.link.unblock_reading(1 - self.side, "peer-full")


class FaultProxy:
    """TCP proxy in front of ``upstream_host:upstream_port`` with switchable faults.

    All public methods and properties are thread-safe.  Setting :attr:`mode`
    returns only once the new mode is in force for existing and new
    connections, so a test can flip it and act immediately.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.host = listen_host
        self.port = listen_port
        self._mode = FaultMode.PASS
        self._connect_delay = 0.0
        self._latency = 0.0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()
        # Loop-thread state; only touched from the proxy thread.
        self._applied_mode = FaultMode.PASS
        self._frozen = False
        self._unfrozen: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._transports: set[asyncio.Transport] = set()
        self._total_accepted = 0
        self._read_view = memoryview(bytearray(_READ_SIZE))

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self.port} -> {self.upstream_host}:{self.upstream_port}"
            f" mode={self._mode.value}>"
        )

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind the listening socket and start serving in a daemon thread."""
        with self._lock:
            if self._thread is not None:
                return self
            family, type_, proto, _, addr = socket.getaddrinfo(
                self.listen_host, self.listen_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, type_, proto)
            try:
                if os.name == "posix":  # elsewhere it would allow port hijacking
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(1024)
                sock.setblocking(False)
                self.host, self.port = sock.getsockname()[:2]
                # Selector loop on every platform: one well-understood I/O path.
                loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()
            except BaseException:
                sock.close()
                raise
            self._links = set()
            self._transports = set()
            self._total_accepted = 0
            self._applied_mode = self._mode
            self._frozen = self._mode is FaultMode.BLACKHOLE
            # Created here, not in _serve, so a mode change racing with start()
            # finds it; asyncio.Event binds to the loop only on first use.
            self._unfrozen = asyncio.Event()
            if not self._frozen:
                self._unfrozen.set()
            thread = threading.Thread(
                target=self._run, args=(loop,), name=f"FaultProxy:{self.port}", daemon=True
            )
            self._loop, self._thread = loop, thread
            thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(sock), loop).result(_CALL_TIMEOUT)
        except BaseException:
            sock.close()
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection and join the thread; idempotent.

        Never waits on peers (connections are aborted, not drained), so it
        returns promptly even while BLACKHOLE holds data.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            if thread is threading.current_thread():
                raise RuntimeError("FaultProxy.stop() cannot be called from the proxy thread")
            self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CALL_TIMEOUT)
        except Exception:
            logger.exception("fault proxy: error during shutdown")
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_CALL_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            with self._lock:
                pending, self._pending = self._pending, set()
            for fut in pending:
                if not fut.done():
                    fut.set_exception(RuntimeError("FaultProxy stopped"))
            loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Side(self, None, _CLIENT), sock=sock, backlog=1024
        )

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.abort(rst=False)
        for transport in list(self._transports):
            transport.abort()
        # Let the transports' connection_lost callbacks run and close sockets.
        for _ in range(3):
            await asyncio.sleep(0)

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the proxy thread and return its result.

        Raises RuntimeError if the proxy is not running or stops before ``fn``
        ran (pending calls are failed on shutdown rather than left hanging).
        """
        fut: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def runner() -> None:
            with self._lock:
                self._pending.discard(fut)
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)

        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                raise RuntimeError("FaultProxy is not running; call start() first")
            if thread is not threading.current_thread():
                self._pending.add(fut)
                loop.call_soon_threadsafe(runner)
        if thread is threading.current_thread():
            return fn()
        return fut.result(_CALL_TIMEOUT)

    # -- fault controls --------------------------------------------------------

    @property
    def mode(self) -> FaultMode:
        """Current :class:`FaultMode`; assignment takes effect before it returns."""
        return self._mode

    @mode.setter
    def mode(self, value: FaultMode | str) -> None:
        mode = FaultMode(value)
        with self._lock:
            self._mode = mode
            running = self._loop is not None
        if running:
            with contextlib.suppress(RuntimeError):  # stopped concurrently
                self._call(self._apply_mode)

    def _apply_mode(self) -> None:
        # Read the latest value rather than capturing one, so concurrent
        # setters cannot be applied out of order.
        mode = self._mode
        self._applied_mode = mode
        frozen = mode is FaultMode.BLACKHOLE
        if frozen == self._frozen:
            return
        self._frozen = frozen
        assert self._unfrozen is not None
        if frozen:
            self._unfrozen.clear()
            return
        self._unfrozen.set()
        for link in list(self._links):
            try:
                link.wake()
            except Exception:
                logger.exception("fault proxy: error resuming connection; resetting it")
                link.abort(rst=True)

    @property
    def connect_delay(self) -> float:
        """Seconds between accepting a client and connecting upstream (slow connect)."""
        return self._connect_delay

    @connect_delay.setter
    def connect_delay(self, value: float) -> None:
        self._connect_delay = _check_seconds("connect_delay", value)

    @property
    def latency(self) -> float:
        """Seconds added to each chunk in each direction, so a round trip gains twice this."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._latency = _check_seconds("latency", value)

    def reset_all(self) -> int:
        """Reset (RST) every open client connection and its upstream; return how many."""

        def reset() -> int:
            links = list(self._links)
            for link in links:
                link.abort(rst=True)
            return len(links)

        try:
            return self._call(reset)
        except RuntimeError:
            if self._loop is None:
                return 0  # not running: nothing open
            raise

    @property
    def active_connections(self) -> int:
        """Client connections currently proxied (including ones not yet connected upstream)."""
        return len(self._links)

    @property
    def total_accepted(self) -> int:
        """Client connections accepted since :meth:`start`, refused ones included."""
        return self._total_accepted

    # -- helpers ---------------------------------------------------------------

    def url_for(self, url: str) -> str:
        """Return ``url`` with its host and port pointing at this proxy.

        Everything else (driver, credentials, database, query) is kept
        verbatim; the password is never logged.
        """
        if not self.port:
            raise RuntimeError("FaultProxy is not running; call start() first")
        try:
            from sqlalchemy.engine import make_url
        except ImportError:
            return self._url_for_stdlib(url)
        return make_url(url).set(host=self.host, port=self.port).render_as_string(hide_password=False)

    def _url_for_stdlib(self, url: str) -> str:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        userinfo, sep, _ = parts.netloc.rpartition("@")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return urlunsplit(parts._replace(netloc=f"{userinfo}{sep}{host}:{self.port}"))
