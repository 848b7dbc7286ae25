# DistLM: `make run` starts the gateway, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONPATH := $(CURDIR)/backend

.PHONY: run test test-fast bench lint format clean chromium

# Stamp files make a repeat run skip installs that are already done.
$(VENV)/.runtime-installed: backend/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r backend/requirements.txt
	# Our packages, editable, so the `distlm-node` agent command exists in .venv/bin.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed backend/requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r backend/requirements-dev.txt
	# The dashboard's browser test drives Debian's Chromium (Playwright cannot download one).
	command -v chromium >/dev/null 2>&1 || $(MAKE) --no-print-directory chromium
	touch $@

# root needs no sudo; anyone else needs it for apt-get.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
chromium:
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	  || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

run: $(VENV)/.runtime-installed
	$(BIN)/python -m app.launcher

# Two test processes or more (one per core, at most 4), each taking whole files: the suite
# waits on processes, Rays and heartbeats about a third of the time when run in one.
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -n logical --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)

# The developers' loop, in under two minutes on 2 cores: no Ray, no launched gateways, no
# browser; SQLite only; two test processes, each taking whole files (the host-network tests
# make one bridge at a time).
test-fast: $(VENV)/.dev-installed
	env -u TEST_DATABASE_URL $(BIN)/python -m pytest -n 2 --dist loadfile \
	  -m "not slow and not ray and not browser and not postgres" $(PYTEST_ARGS)

# Every benchmark in one sitting and one table of ratios (benchmarks/README.md); not part of
# `make test`: it takes about half an hour and wants a quiet machine.
bench: $(VENV)/.dev-installed
	PYTHONPATH=backend $(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check backend tests benchmarks alembic
	$(BIN)/ruff format --check backend tests benchmarks alembic

format: $(VENV)/.dev-installed
	$(BIN)/ruff format backend tests benchmarks alembic
	$(BIN)/ruff check --fix backend tests benchmarks alembic

clean:
	rm -rf $(VENV) var .pytest_cache
