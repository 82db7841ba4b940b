# continuum — developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test test-unit test-integration bench clean

# torch is installed FIRST and pinned: it comes as a CPU wheel from a local file here, and anything that
# depends on torch installed before it would pull a multi-GB CUDA build instead.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Server binaries the integration tests start on loopback: Postgres (initdb/pg_ctl) and redis-server;
# headless Chromium renders the report page in tests/integration/test_report.py.
# The S3-compatible server (moto) comes from PyPI with the test extras.
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
	@id postgres >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || useradd --system postgres

demo: install
	$(VENV)/bin/continuum demo

test: install system-deps
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install system-deps
	$(PY) -m pytest -q tests/integration tests/e2e

bench: install system-deps
	$(PY) bench/export.py
	$(PY) bench/train_throughput.py
	$(PY) bench/fisher.py
	$(PY) bench/regularizers.py
	$(PY) bench/forgetting.py
	$(PY) bench/dispatch.py
	$(PY) bench/pipeline_overhead.py

clean:
	rm -rf $(VENV) .continuum .pytest_cache
