"""A throw-away PgBouncer in front of a real PostgreSQL, for tests and benchmarks.

:class:`PgBouncer` writes a config into a temporary directory and runs
``/usr/sbin/pgbouncer`` (Debian's ``pgbouncer`` package; ``make sysdeps``
installs it) as a foreground subprocess on a free ``127.0.0.1`` port. Stopping
and starting again keeps the port, so a client can watch "its" proxy go away
and come back. Nothing here is imported by the pool itself.

Example::

    with PgBouncer(max_db_connections=4) as pgb:
        engine = create_engine(pgb.url(), poolclass=SmartPool)
        pgb.show("POOLS")        # the admin console, rows as dicts

Running as root: PgBouncer refuses to (``FATAL PgBouncer should not run as
root``) unless told which user to switch to, so under euid 0 it is started
with ``-u <run_as>`` (default ``nobody``). It switches user *before* opening
a ``logfile``, so no logfile is configured: its log goes to stderr, which is
captured into a file this process opens (:meth:`PgBouncer.log_tail`). The
config directory is made world-readable; it holds no secret (``auth_type =
trust`` for the one ``auth_file`` user, as the local PostgreSQL trusts
127.0.0.1).

Server connections are tagged ``application_name=<PgBouncer.application_name>``
(set in the ``[databases]`` line), so ``pg_stat_activity`` shows which backends
belong to this PgBouncer. A client that sends its own ``application_name``
overrides the tag on the backend it is using (PgBouncer forwards it), so
count by the tag only with clients that do not set one.

Standard library only (the admin console is spoken with PostgreSQL's simple
query protocol), like :mod:`sqlalchemy_smartpool.testing.proxy`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

__all__ = ["PgBouncer", "PgBouncerError"]

PGBOUNCER_BINARY = "/usr/sbin/pgbouncer"

PoolMode = Literal["session", "transaction", "statement"]

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_INT_OIDS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_ADMIN_TIMEOUT = 5.0


class PgBouncerError(RuntimeError):
    """PgBouncer did not start, or its admin console answered with an error."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PgBouncer:
    """One PgBouncer subprocess in front of ``pg_host:pg_port/dbname``.

    ``max_db_connections`` is the budget of server connections to the
    database (0 = unlimited, PgBouncer's default); ``default_pool_size`` the
    server connections per user/database pair; ``max_client_conn`` how many
    clients may connect to PgBouncer at all.
    """

    def __init__(
        self,
        *,
        pool_mode: PoolMode = "transaction",
        max_db_connections: int = 0,
        default_pool_size: int = 20,
        max_client_conn: int = 100,
        pg_host: str = "127.0.0.1",
        pg_port: int = 5432,
        dbname: str = "test",
        user: str = "postgres",
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str = PGBOUNCER_BINARY,
        run_as: str = "nobody",
        settings: dict[str, str | int] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.pool_mode: PoolMode = pool_mode
        self.max_db_connections = max_db_connections
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.pg_host = pg_host
        self.pg_port = pg_port
        self.dbname = dbname
        self.user = user
        self.host = host
        self._port = port
        self.binary = binary
        self.run_as = run_as
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        #: the ``application_name`` of this PgBouncer's server connections in pg_stat_activity
        self.application_name = f"pgb-{uuid.uuid4().hex[:12]}"
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port PgBouncer listens on (chosen on first start, kept across restarts)."""
        if self._port is None:
            raise PgBouncerError("PgBouncer has no port yet: start() it first")
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PgBouncer:
        """Start PgBouncer and wait until it answers; raise :class:`PgBouncerError` with its log if not."""
        if self.running:
            return self
        if not os.access(self.binary, os.X_OK):
            raise PgBouncerError(f"{self.binary} is not an executable (Debian: apt-get install pgbouncer)")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="smartpool-pgbouncer-"))
            self._dir.chmod(0o755)  # readable by the user PgBouncer switches to under root
        if self._port is None:
            self._port = _free_port(self.host)
        config = self._write_config(self._dir)
        cmd = [self.binary]
        if os.geteuid() == 0:
            cmd += ["-u", self.run_as]
        cmd.append(str(config))
        log_path = self._dir / "pgbouncer.log"
        log_start = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:  # the child keeps its own copy of the fd
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + self.start_timeout
        # "process up" is in *this* process's log: another listener on the port cannot pass for it
        while not (self._logged("process up", log_start) and self._answers()):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise PgBouncerError(f"pgbouncer exited with {code} on start:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                self.stop()
                raise PgBouncerError(
                    f"pgbouncer did not answer on {self.host}:{self._port} within"
                    f" {self.start_timeout:g} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (PgBouncer's immediate shutdown: clients are dropped), then SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def restart(self) -> PgBouncer:
        """Stop, then start again on the same port (new server connections, no client survives)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the config directory."""
        self.stop()
        if self._dir is not None:
            for path in self._dir.iterdir():
                path.unlink()
            self._dir.rmdir()
            self._dir = None

    def __enter__(self) -> PgBouncer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PgBouncer {self.host}:{self._port} {self.pool_mode} {state}>"

    # -- clients --------------------------------------------------------------------------

    def url(self, driver: str = "psycopg2", *, query: str = "") -> str:
        """A SQLAlchemy URL string to ``dbname`` through this PgBouncer."""
        tail = f"?{query}" if query else ""
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{self.dbname}{tail}"

    def show(self, what: str) -> list[dict[str, Any]]:
        """Run ``SHOW <what>`` (POOLS, SERVERS, CLIENTS, ...) on the admin console; rows as dicts.

        Integer columns come back as ``int``, the rest as ``str`` (or None).
        """
        word = what.strip().split()[0] if what.strip() else ""
        if not word.isalpha():
            raise ValueError(f"not an admin SHOW target: {what!r}")
        return self._admin_query(f"SHOW {word.upper()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines PgBouncer logged (for error messages)."""
        if self._dir is None or not (self._dir / "pgbouncer.log").exists():
            return "(no log)"
        text = (self._dir / "pgbouncer.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    # -- internals ------------------------------------------------------------------------

    def _write_config(self, directory: Path) -> Path:
        auth = directory / "userlist.txt"
        auth.write_text(f'"{self.user}" ""\n')
        settings: dict[str, str | int] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            "unix_socket_dir": "",  # no socket file in /tmp, no clash with another instance
            "auth_type": "trust",
            "auth_file": str(auth),
            "admin_users": self.user,
            "pool_mode": self.pool_mode,
            "max_db_connections": self.max_db_connections,
            "default_pool_size": self.default_pool_size,
            "max_client_conn": self.max_client_conn,
            "ignore_startup_parameters": "extra_float_digits",
            **self.settings,
        }
        db = (
            f"host={self.pg_host} port={self.pg_port} dbname={self.dbname}"
            f" application_name={self.application_name}"
        )
        lines = ["[databases]", f"{self.dbname} = {db}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        config = directory / "pgbouncer.ini"
        config.write_text("\n".join(lines) + "\n")
        for path in (auth, config):
            path.chmod(0o644)
        return config

    def _logged(self, text: str, offset: int) -> bool:
        assert self._dir is not None
        with open(self._dir / "pgbouncer.log", "rb") as log:
            log.seek(offset)
            return text.encode() in log.read()

    def _answers(self) -> bool:
        """PgBouncer speaks the protocol: an SSLRequest gets its one-byte answer."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                s.sendall(_SSL_REQUEST)
                return s.recv(1) in (b"N", b"S")
        except OSError:
            return False

    def _admin_query(self, sql: str) -> list[dict[str, Any]]:
        params = f"user\0{self.user}\0database\0pgbouncer\0\0".encode()
        startup = struct.pack("!ii", 8 + len(params), 196608) + params
        with socket.create_connection((self.host, self.port), timeout=_ADMIN_TIMEOUT) as s:
            s.sendall(startup)
            reader = _Reader(s)
            while (kind := reader.message())[0] != b"Z":
                if kind[0] == b"R" and struct.unpack("!i", kind[1][:4])[0] != 0:
                    raise PgBouncerError("admin console asked for a password (expected auth_type=trust)")
                _raise_if_error(kind)
            query = sql.encode() + b"\0"
            s.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
            columns: list[tuple[str, int]] = []
            rows: list[dict[str, Any]] = []
            while (msg := reader.message())[0] != b"Z":
                _raise_if_error(msg)
                if msg[0] == b"T":
                    columns = _row_description(msg[1])
                elif msg[0] == b"D":
                    rows.append(_data_row(msg[1], columns))
            with contextlib.suppress(OSError):
                s.sendall(b"X" + struct.pack("!i", 4))
            return rows


class _Reader:
    """Backend messages off a socket, one (type, body) at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise PgBouncerError("admin console closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def message(self) -> tuple[bytes, bytes]:
        head = self._read(5)
        return head[:1], self._read(struct.unpack("!i", head[1:])[0] - 4)


def _raise_if_error(msg: tuple[bytes, bytes]) -> None:
    if msg[0] != b"E":
        return
    fields = {f[:1]: f[1:].decode(errors="replace") for f in msg[1].split(b"\0") if f}
    raise PgBouncerError(f"admin console: {fields.get(b'M', 'error')}")


def _row_description(body: bytes) -> list[tuple[str, int]]:
    (count,) = struct.unpack("!h", body[:2])
    pos, columns = 2, []
    for _ in range(count):
        end = body.index(b"\0", pos)
        name = body[pos:end].decode()
        type_oid = struct.unpack("!i", body[end + 7 : end + 11])[0]
        columns.append((name, type_oid))
        pos = end + 19  # name\0, table oid(4), attnum(2), type oid(4), typlen(2), typmod(4), format(2)
    return columns


def _data_row(body: bytes, columns: list[tuple[str, int]]) -> dict[str, Any]:
    (count,) = struct.unpack("!h", body[:2])
    pos = 2
    row: dict[str, Any] = {}
    for i in range(count):
        (size,) = struct.unpack("!i", body[pos : pos + 4])
        pos += 4
        name, type_oid = columns[i]
        if size < 0:
            row[name] = None
            continue
        text = body[pos : pos + size].decode(errors="replace")
        pos += size
        row[name] = int(text) if type_oid in _INT_OIDS else text
    return row
