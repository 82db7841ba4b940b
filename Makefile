# continuum — developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test test-unit test-integration bench clean

# torch is installed FIRST and pinned: anything that depends on torch installed before it would pull
# PyPI's default Linux build, which is the multi-GB CUDA one. Where pip finds a local torch wheel
# (pip's find-links) that is used (its own dependencies then come from the index); else a machine without nvidia-smi (and not a Mac, whose PyPI build
# is the MPS one) takes the CPU build from PyTorch's own index; a CUDA machine takes PyPI's.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if $(PY) -m pip install -q --no-index --no-deps torch==$(TORCH_VERSION) 2>/dev/null; then \
	  $(PY) -m pip install -q torch==$(TORCH_VERSION); \
	else \
	  $(PY) -m pip install -q torch==$(TORCH_VERSION) $$(command -v nvidia-smi >/dev/null || \
	    [ "$$(uname -s)" = Darwin ] || echo --index-url $(TORCH_CPU_INDEX)); \
	fi
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
	$(PY) bench/cli_round_trip.py
	$(PY) bench/job_startup.py

clean:
	rm -rf $(VENV) .continuum .pytest_cache
