"""docs/examples/flask_app.py and fastapi_app.py against the real PostgreSQL and Redis: the app's
own route and smartpool's endpoints mounted under /pool, through each framework's test client."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from sqlalchemy_smartpool.web import HEALTH_SCHEMA, STATUS_SCHEMA

from ._services import HOST, POSTGRES_PORT, REDIS_PORT, require_postgres, require_redis
from .conftest import pg_url

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
REDIS_URL = f"redis://{HOST}:{REDIS_PORT}/0"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"smartpool_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_endpoints(get: Any) -> None:
    r = get("/pool/health")
    assert r.status_code == 200, r.text
    body = r.json()
    jsonschema.validate(body, HEALTH_SCHEMA)
    assert set(body["pools"]) == {"db", "cache"}
    assert {p["probe"]["outcome"] for p in body["pools"].values()} == {"ok"}, body
    jsonschema.validate(get("/pool/status.json").json(), STATUS_SCHEMA)
    page = get("/pool/")
    assert page.status_code == 200 and "pool status" in page.text
    metrics = get("/pool/metrics")
    assert metrics.status_code == 200 and 'smartpool_pool_size{pool="db"}' in metrics.text


def test_flask_example(app_name: str) -> None:
    require_postgres()
    require_redis()
    pytest.importorskip("flask")
    app = load("flask_app").create_app(pg_url(app_name), REDIS_URL)
    try:
        client = app.test_client()
        r = client.get("/orders/count")
        assert r.status_code == 200 and r.get_json() == {"orders": 3, "cache": True}
        redirect = client.get("/pool")
        assert redirect.status_code == 307 and redirect.headers["Location"].endswith("/pool/")

        class Wrapped:
            def __init__(self, resp: Any) -> None:
                self.status_code = resp.status_code
                self.text = resp.get_data(as_text=True)
                self._resp = resp

            def json(self) -> Any:
                return self._resp.get_json()

        check_endpoints(lambda path: Wrapped(client.get(path)))
    finally:
        app.extensions["smartpool_close"]()


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_fastapi_example(app_name: str) -> None:
    require_postgres()
    require_redis()
    pytest.importorskip("fastapi")
    pytest.importorskip("asyncpg")
    from fastapi.testclient import TestClient

    app = load("fastapi_app").create_app(
        f"postgresql+asyncpg://postgres@{HOST}:{POSTGRES_PORT}/test",
        REDIS_URL,
        connect_args={"server_settings": {"application_name": app_name}},
    )
    with TestClient(app) as client:  # one event loop for the whole session: the pools' loop
        r = client.get("/orders/count")
        assert r.status_code == 200 and r.json() == {"orders": 3, "cache": True}
        check_endpoints(client.get)
        redirect = client.get("/pool", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"].endswith("/pool/")
