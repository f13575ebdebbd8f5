"""A tiny WSGI app for the gunicorn ``--preload`` test (tests/integration/test_gunicorn.py).

The engine is created -- and used -- at import, i.e. in gunicorn's master
before it forks the workers: the workers inherit a pool with live sessions and
a running housekeeper, the case fork safety is for.

* ``/query``: one round trip (a short ``pg_sleep``, so requests overlap) that
  reports the worker's pid and the backend pid that served it;
* ``/stats``: the worker's pid and its pool's size;
* ``/health``: no database at all.

Settings come from the environment: ``SP_GUNICORN_URL`` (with the test's
``application_name``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool

engine = sa.create_engine(
    os.environ["SP_GUNICORN_URL"], poolclass=SmartPool, min_size=2, max_size=4, idle_timeout=600
)
with engine.connect() as _c:  # the master talks to the database before forking
    _c.exec_driver_sql("SELECT 1")
engine.pool.wait(10)  # type: ignore[attr-defined]

Respond = Callable[[str, list[tuple[str, str]]], Any]


def _json(start_response: Respond, body: dict[str, Any], status: str = "200 OK") -> Iterable[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def app(environ: dict[str, Any], start_response: Respond) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        return _json(start_response, {"pid": os.getpid()})
    if path == "/stats":
        pool = engine.pool
        return _json(start_response, {"pid": os.getpid(), "size": pool.size(), "in_use": pool.checkedout()})
    if path == "/query":
        try:
            with engine.connect() as c:
                backend = c.exec_driver_sql("SELECT pg_backend_pid() FROM pg_sleep(0.005)").scalar_one()
                answer = c.exec_driver_sql("SELECT 41 + 1").scalar_one()
        except Exception as err:  # reported to the test, which fails on any
            error = {"error": f"{type(err).__name__}: {err}"}
            return _json(start_response, error, "500 Internal Server Error")
        return _json(start_response, {"pid": os.getpid(), "backend": backend, "answer": answer})
    return _json(start_response, {"error": "not found"}, "404 Not Found")
