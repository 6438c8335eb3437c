# Every target installs what it needs first, so each works on a fresh machine.
VENV ?= .venv
BIN := $(VENV)/bin

# The supported-version matrix: the oldest and the newest release of every range pyproject.toml
# declares. .venv (python3, the newest of everything, RQ 3) runs the whole suite; each venv below pins
# what .ci/matrix/<name>.txt says and runs the tests that concern its pins.
PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
PYTHON_OLDEST ?= $(firstword $(wildcard $(PYENV_VERSIONS)/3.10.*/bin/python) python3.10)
PYTHON_NEWEST ?= $(firstword $(wildcard $(PYENV_VERSIONS)/3.13.*/bin/python) python3.13)
OLDEST := .venv-oldest
OLDEST_CELERY := .venv-oldest-celery
RQ26 := .venv-rq26
NEWEST := .venv-newest

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(OLDEST)/bin/.installed: PYTHON := $(PYTHON_OLDEST)
$(OLDEST_CELERY)/bin/.installed: PYTHON := $(PYTHON_OLDEST)
$(RQ26)/bin/.installed: PYTHON := python3
$(NEWEST)/bin/.installed: PYTHON := $(PYTHON_NEWEST)
.venv-%/bin/.installed: .ci/matrix/%.txt pyproject.toml
	rm -rf .venv-$*
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -r .ci/matrix/$*.txt
	touch $@

.PHONY: demo test suite matrix lint bench chaos
demo: $(BIN)/.installed
	$(BIN)/zombieguard demo

test: suite matrix

suite: $(BIN)/.installed
	$(BIN)/pytest

# Installed one after another, then tested two venvs at a time (the tests never rely on being the
# only user of a Redis or a broker: queues and key prefixes are their own); longest first, so that
# the two lanes end together.
matrix: $(OLDEST)/bin/.installed $(OLDEST_CELERY)/bin/.installed $(RQ26)/bin/.installed \
		$(NEWEST)/bin/.installed
	$(MAKE) --no-print-directory -j2 --output-sync=target \
		matrix-oldest-celery matrix-newest matrix-oldest matrix-rq26

.PHONY: matrix-oldest matrix-oldest-celery matrix-rq26 matrix-newest
matrix-oldest: $(OLDEST)/bin/.installed
	$(OLDEST)/bin/pytest tests/unit tests/integration --ignore=tests/integration/celery tests/e2e/rq \
		tests/e2e/test_django.py
matrix-oldest-celery: $(OLDEST_CELERY)/bin/.installed
	$(OLDEST_CELERY)/bin/pytest tests/integration/celery tests/e2e/celery tests/e2e/test_sentry_workers.py \
		tests/e2e/test_child_processes.py tests/unit/enforcement/test_children.py \
		tests/e2e/test_secure_redis.py tests/e2e/test_eviction.py tests/e2e/test_sentinel.py \
		tests/e2e/test_cluster.py tests/e2e/ops/test_cli.py tests/e2e/test_configuration.py \
		tests/e2e/test_logs.py
matrix-rq26: $(RQ26)/bin/.installed
	$(RQ26)/bin/pytest tests/integration/rq tests/e2e/rq
matrix-newest: $(NEWEST)/bin/.installed
	$(NEWEST)/bin/pytest tests/unit tests/integration tests/e2e/rq tests/e2e/test_django.py \
		tests/e2e/celery/test_healthy.py tests/e2e/celery/test_limits.py tests/e2e/test_sentry_workers.py

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict

# The long chaos run: 1,000 jobs under 10 minutes of random faults, per framework and broker (about
# 35 minutes in all). SEED=<n> replays one; each run prints its seed and its table.
SEED ?=
CHAOS := $(BIN)/python -m tests.chaos --jobs 1000 --duration 600 --drain 240 $(if $(SEED),--seed $(SEED))
chaos: $(BIN)/.installed
	$(CHAOS) --framework rq --workers GuardedWorker,GuardedWorker,GuardedWorker,GuardedSimpleWorker,GuardedSimpleWorker
	$(CHAOS) --framework celery --pools prefork,prefork,threads,threads,solo --broker redis
	$(CHAOS) --framework celery --pools prefork,prefork,threads,solo --broker rabbitmq

bench: $(BIN)/.installed
	$(BIN)/python -m bench.core
	$(BIN)/python -m bench.rq
	$(BIN)/python -m bench.celery
