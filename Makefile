# The two set-up commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint type unit bench sysdeps clean

# System packages the Python extras build against (mysqlclient needs the MariaDB client headers).
sysdeps:
	@if ! pkg-config --exists libmariadb 2>/dev/null && ! pkg-config --exists mysqlclient 2>/dev/null; then \
		echo "installing MariaDB client headers for mysqlclient (apt)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libmariadb-dev pkg-config gcc; \
	fi
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing Debian's chromium + chromium-driver for the status-page browser test (apt)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 chromium chromium-driver; \
	fi
	@# pgbouncer for tests/integration/test_pgbouncer.py: each test starts its own /usr/sbin/pgbouncer on a
	@# free port. policy-rc.d exit 101 keeps the package's system service (port 6432) from being started.
	@# redis-server: tests that stop a Redis start their own (test_fleet, test_redis_pool, the redis-outage bench).
	@if [ ! -x /usr/sbin/pgbouncer ] || ! command -v redis-server >/dev/null; then \
		echo "installing Debian's pgbouncer and redis-server for the integration tests (apt; their services are not started)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		PRC=/usr/sbin/policy-rc.d; ADDED=; \
		if [ ! -e $$PRC ]; then printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$PRC >/dev/null && $$SUDO chmod +x $$PRC && ADDED=1; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 pgbouncer redis-server; RC=$$?; \
		[ -z "$$ADDED" ] || $$SUDO rm -f $$PRC; \
		exit $$RC; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[plot,cli]'
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python sysdeps
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

## make demo: virtualenv + install + a bursty workload on embedded SQLite (no server needed)
demo: $(VENV)/.demo-installed
	$(BIN)/smartpool demo

## make test: virtualenv + install + lint + types + every test against the real servers
test: $(STAMP)
	$(BIN)/ruff check sqlalchemy_smartpool tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest --cov --cov-report=term --cov-fail-under=90 $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check sqlalchemy_smartpool tests benchmarks

type: $(STAMP)
	$(BIN)/mypy

## make bench: every benchmark scenario, SmartPool vs the anchors, in one run
bench: $(STAMP)
	$(BIN)/smartpool bench all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov build *.egg-info
